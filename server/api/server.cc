#include "server/api/server.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <grpcpp/resource_quota.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/api/auth.h"
#include "server/api/http_endpoint.h"
#include "server/api/inference_service.h"
#include "server/metrics/metrics.h"
#include "server/core/model_registry.h"
#include "server/jobs/train_spec.h"
#include "server/jobs/train_manager.h"
#include "server/api/training_service.h"
#include "server/core/worker_pool.h"

namespace tandem {
Server::Server() = default;

Server::~Server() {
  Shutdown(absl::ZeroDuration());
  if (state_lock_fd_ >= 0) ::close(state_lock_fd_);
}

absl::Status Server::LockStateDir(const std::string& state_dir) {
  std::error_code ec;
  std::filesystem::create_directories(state_dir, ec);
  const std::string path = state_dir + "/tandemd.lock";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    char pid[32] = {0};
    const ssize_t n = ::pread(fd, pid, sizeof pid - 1, 0);
    ::close(fd);
    return absl::FailedPreconditionError(absl::StrCat(
        "--state_dir ", state_dir, " is in use by another tandemd",
        n > 0 ? absl::StrCat(" (pid ", absl::StripAsciiWhitespace(pid), ")") : std::string(),
        ": one server per state folder"));
  }
  const std::string mine = absl::StrCat(::getpid(), "\n");
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, mine.data(), mine.size(), 0) < 0) {
    // The lock holds regardless; the pid is only for the message above.
  }
  state_lock_fd_ = fd;
  return absl::OkStatus();
}

int Server::metrics_port() const { return http_ ? http_->port() : 0; }

namespace {

// HOST of HOST:PORT ("[::1]:80" -> "::1"); the whole address when it has no port.
std::string HostOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  std::string host = colon == std::string::npos ? address : address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host;
}

bool IsLoopback(const std::string& host) {
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

bool IsWildcard(const std::string& host) {
  return host.empty() || host == "0.0.0.0" || host == "::" || host == "*";
}

}  // namespace

absl::StatusOr<std::string> Server::ConfineAddress(const std::string& address,
                                                   const ServerOptions& options,
                                                   const char* flag) {
  const bool authenticated = !options.auth_tokens.empty() || !options.tls.client_ca.empty();
  if (authenticated || options.insecure_allow_remote || absl::StartsWith(address, "unix:")) {
    return address;
  }
  const std::string host = HostOf(address);
  if (IsLoopback(host)) return address;
  if (IsWildcard(host)) {
    const size_t colon = address.rfind(':');
    std::string confined = absl::StrCat("127.0.0.1", address.substr(colon));
    std::fprintf(stderr,
                 "tandemd: no --auth_tokens: %s=%s listens on %s only (loopback); give "
                 "--auth_tokens=FILE (or --tls_client_ca) to serve other hosts, or "
                 "--insecure_allow_remote to serve them without authentication\n",
                 flag, address.c_str(), confined.c_str());
    return confined;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "refusing ", flag, "=", address,
      " without authentication: anyone who reaches it could train on this machine and replace "
      "served models. Give --auth_tokens=FILE (or --tls_client_ca), or "
      "--insecure_allow_remote"));
}

absl::Status Server::StartGrpc(const ServerOptions& options) {
  absl::StatusOr<std::string> listen = ConfineAddress(options.listen, options, "--listen");
  if (!listen.ok()) return listen.status();
  listen_ = *listen;
  const GrpcLimits& g = options.grpc;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen_,
                           tls_ ? tls_->GrpcCredentials() : grpc::InsecureServerCredentials(),
                           &port_);
  builder.SetMaxReceiveMessageSize(g.max_receive_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, g.max_concurrent_streams);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             g.min_ping_interval_seconds * 1000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, g.max_ping_strikes);
  if (g.keepalive_seconds > 0) {
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, g.keepalive_seconds * 1000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, g.keepalive_timeout_seconds * 1000);
  }
  if (g.max_connection_idle_seconds > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                               g.max_connection_idle_seconds * 1000);
  }
  if (g.memory_limit_mb > 0) {
    grpc::ResourceQuota quota("tandemd");
    quota.Resize(static_cast<size_t>(g.memory_limit_mb) << 20);
    builder.SetResourceQuota(quota);
  }
  builder.RegisterService(inference_.get());
  builder.RegisterService(training_.get());
  grpc_server_ = builder.BuildAndStart();
  if (!grpc_server_ || port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", listen_,
                                               " (address in use or not local?)"));
  }
  grpc_server_->GetHealthCheckService()->SetServingStatus(true);
  return absl::OkStatus();
}

absl::Status Server::Reload() {
  absl::Status status = auth_->Reload();
  if (tls_) {
    if (absl::Status s = tls_->Reload(); !s.ok() && status.ok()) status = s;
  }
  return status;
}

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const ServerOptions& options) {
  std::unique_ptr<Server> server(new Server());
  server->metrics_ = std::make_unique<Metrics>();
  absl::StatusOr<std::unique_ptr<Authenticator>> auth = Authenticator::Create(options.auth_tokens);
  if (!auth.ok()) return auth.status();
  server->auth_ = *std::move(auth);
  if (!options.tls.cert.empty() || !options.tls.key.empty() || !options.tls.client_ca.empty()) {
    absl::StatusOr<std::unique_ptr<TlsMaterial>> tls = TlsMaterial::Load(options.tls);
    if (!tls.ok()) return tls.status();
    server->tls_ = *std::move(tls);
  }

  absl::StatusOr<std::unique_ptr<ModelRegistry>> registry =
      ModelRegistry::Create(options.models_dir, options.default_model,
                            {options.devices, options.max_sequences_per_device,
                             options.max_images_per_device});
  if (!registry.ok()) return registry.status();
  server->registry_ = *std::move(registry);
  for (const auto& e : server->registry_->List()) {
    server->metrics_->model_info
        .Add({{"name", e->name},
              {"kind", e->dir.kind == ModelKind::kText ? "text" : "image"},
              {"version", absl::StrCat(e->version)}})
        .Set(static_cast<double>(e->parameters));
  }

  WorkerPoolOptions pool_options;
  pool_options.max_pending = options.max_pending;
  pool_options.max_queue_per_model = options.max_queue_per_model;
  pool_options.train_budgets = {options.train_memory_limit_mb > 0
                                    ? options.train_memory_limit_mb * (int64_t{1} << 20)
                                    : DefaultTrainingMemoryBudget()};
  pool_options.loop.prefill_token_budget = options.prefill_token_budget;
  absl::StatusOr<std::unique_ptr<WorkerPool>> pool =
      WorkerPool::Create(pool_options, server->registry_.get(), server->metrics_.get());
  if (!pool.ok()) return pool.status();
  server->pool_ = *std::move(pool);

  InferenceOptions inference_options;
  inference_options.limits = options.limits;
  inference_options.log_requests = options.log_requests;
  inference_options.max_request_time = absl::Seconds(options.grpc.max_request_seconds);
  server->inference_ = std::make_unique<InferenceService>(
      server->registry_.get(), server->pool_.get(), server->metrics_.get(), server->auth_.get(),
      inference_options);
  // Training needs the state folder to itself and a job store that opens; without them the
  // server still serves, and every Training call says why training is off.
  absl::Status training_off = absl::FailedPreconditionError(
      "training is disabled: start tandemd with --state_dir (and --data_dir for datasets)");
  if (!options.state_dir.empty()) {
    absl::Status usable = server->LockStateDir(options.state_dir);
    if (usable.ok()) {
      TrainManagerOptions topts;
      topts.state_dir = options.state_dir;
      topts.data_dir = options.data_dir;
      topts.keep_checkpoints = options.keep_checkpoints;
      absl::StatusOr<std::unique_ptr<TrainManager>> manager = TrainManager::Create(
          topts, server->registry_.get(), server->pool_.get(), server->metrics_.get());
      if (manager.ok()) {
        server->train_manager_ = *std::move(manager);
      } else {
        usable = manager.status();
      }
    }
    if (!usable.ok()) {
      training_off = absl::FailedPreconditionError(
          absl::StrCat("training is disabled: ", usable.message()));
      std::fprintf(stderr, "tandemd: %s\n", std::string(training_off.message()).c_str());
    }
  }
  server->training_ = std::make_unique<TrainingService>(server->train_manager_.get(),
                                                        server->auth_.get(), training_off);

  if (absl::Status s = server->StartGrpc(options); !s.ok()) {
    if (server->train_manager_) server->train_manager_->Stop();
    server->pool_->Stop();
    return s;
  }

  if (!options.metrics_listen.empty()) {
    absl::StatusOr<std::string> metrics_listen =
        ConfineAddress(options.metrics_listen, options, "--metrics_listen");
    if (!metrics_listen.ok()) {
      server->Shutdown(absl::ZeroDuration());
      return metrics_listen.status();
    }
    absl::StatusOr<std::unique_ptr<HttpEndpoint>> http =
        HttpEndpoint::Start(*metrics_listen, server->metrics_.get(), server->tls_.get());
    if (!http.ok()) {
      server->Shutdown(absl::ZeroDuration());
      return absl::Status(http.status().code(),
                          absl::StrCat("metrics endpoint: ", http.status().message()));
    }
    server->http_ = *std::move(http);
  }
  return server;
}

void Server::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (grpc_server_) grpc_server_->GetHealthCheckService()->SetServingStatus(false);
  // Training jobs stop at their next micro-step (checkpointing at a step boundary) while the
  // loops still run; they resume at the next start. Watch calls end UNAVAILABLE.
  if (train_manager_) train_manager_->Stop();
  if (grpc_server_) {
    // New calls are refused at once; in-flight streams get `grace` to finish, then are
    // cancelled, which the device loops notice before their next step.
    grpc_server_->Shutdown(std::chrono::system_clock::now() +
                           absl::ToChronoSeconds(grace));
  }
  if (pool_) pool_->Stop();
  http_.reset();
}

}  // namespace tandem

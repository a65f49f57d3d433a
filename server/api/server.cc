#include "server/api/server.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "models/torch/device.h"
#include "server/api/auth.h"
#include "server/api/build_info.h"
#include "server/api/http_endpoint.h"
#include "server/api/inference_service.h"
#include "server/api/loading_service.h"
#include "server/api/training_service.h"
#include "server/core/model_registry.h"
#include "server/core/worker_pool.h"
#include "server/jobs/train_manager.h"
#include "server/jobs/train_spec.h"
#include "server/metrics/metrics.h"

namespace tandem {
namespace {

// `listen` (HOST:PORT) with its port replaced by `port`.
std::string WithPort(const std::string& listen, int port) {
  const auto colon = listen.rfind(':');
  return absl::StrCat(colon == std::string::npos ? listen : listen.substr(0, colon), ":", port);
}

// The per-model series of every published version: its parameters (the previous version's series
// removed), its slots' capacity per device, and the per-device gauges at 0 so that a model with
// no traffic yet shows 0 rather than nothing. Called from whichever thread publishes.
class ModelGauges {
 public:
  ModelGauges(Metrics* metrics, const RegistryOptions& options)
      : metrics_(metrics), options_(options) {}

  void Published(const ModelEntry& e) {
    const bool text = e.dir.kind == ModelKind::kText;
    {
      absl::MutexLock lock(&mu_);
      auto it = parameters_.find(e.name);
      if (it != parameters_.end()) metrics_->model_info.Remove(it->second);
      parameters_[e.name] = &metrics_->model_info.Add(
          {{"model", e.name}, {"kind", text ? "text" : "image"},
           {"version", absl::StrCat(e.version)}});
      parameters_[e.name]->Set(static_cast<double>(e.parameters));
    }
    for (size_t i = 0; i < options_.devices.size(); ++i) {
      const prometheus::Labels labels = {{"model", e.name}, {"device", options_.devices[i]}};
      metrics_->requests_waiting.Add(labels);
      metrics_->requests_running.Add(labels);
      if (text && i < e.text.size() && e.text[i]) {
        metrics_->kv_slots_capacity.Add(labels).Set(e.text[i]->max_slots());
        metrics_->kv_slots_used.Add(labels);
      } else if (!text && i < e.image.size() && e.image[i]) {
        metrics_->image_slots_capacity.Add(labels).Set(options_.max_images);
        metrics_->image_slots_used.Add(labels);
      }
    }
  }

 private:
  Metrics* const metrics_;
  const RegistryOptions options_;
  absl::Mutex mu_;
  std::map<std::string, prometheus::Gauge*> parameters_ ABSL_GUARDED_BY(mu_);
};

// Each device's training-memory budget: --train_memory_limit_mb, or by default half the RAM on
// the CPU, and on CUDA the device's free memory once the models are loaded less a tenth of its
// total (activations of inference, a hot swap's second version) — so training never takes what
// inference needs.
std::vector<int64_t> TrainingBudgets(const ServerOptions& options) {
  std::vector<int64_t> budgets;
  for (const std::string& device : options.devices) {
    if (options.train_memory_limit_mb > 0) {
      budgets.push_back(options.train_memory_limit_mb * (int64_t{1} << 20));
      continue;
    }
    absl::StatusOr<DeviceMemory> m = ReadDeviceMemory(device);
    if (device == "cpu" || !m.ok()) {
      budgets.push_back(DefaultTrainingMemoryBudget());
    } else {
      budgets.push_back(std::max<int64_t>(1, m->free - m->total / 10));  // 1: nothing fits
    }
  }
  return budgets;
}


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

Server::Server() = default;

Server::~Server() {
  Shutdown(absl::ZeroDuration());
  if (state_lock_fd_ >= 0) ::close(state_lock_fd_);
}

int Server::metrics_port() const { return http_ ? http_->port() : 0; }

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const ServerOptions& options) {
  std::unique_ptr<Server> server(new Server());
  server->metrics_ = std::make_unique<Metrics>();
  server->metrics_->build_info
      .Add({{"version", BuildVersion()}, {"torch", TorchVersion()}, {"cuda", CudaRuntimeVersion()}})
      .Set(1);
  absl::StatusOr<std::unique_ptr<Authenticator>> auth = Authenticator::Create(options.auth_tokens);
  if (!auth.ok()) return auth.status();
  server->auth_ = *std::move(auth);
  if (!options.tls.cert.empty() || !options.tls.key.empty() || !options.tls.client_ca.empty()) {
    absl::StatusOr<std::unique_ptr<TlsMaterial>> tls = TlsMaterial::Load(options.tls);
    if (!tls.ok()) return tls.status();
    server->tls_ = *std::move(tls);
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  absl::Status s = server->StartPorts(options);
  if (s.ok() && options.on_loading) options.on_loading(server->port_, server->metrics_port());
  if (s.ok()) s = server->BuildServices(options);
  if (s.ok()) s = server->StartServing(options);
  if (!s.ok()) {
    server->Shutdown(absl::ZeroDuration());
    return s;
  }
  return server;
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

void Server::ConfigureBuilder(const ServerOptions& options, grpc::ServerBuilder* builder) const {
  const GrpcLimits& g = options.grpc;
  builder->SetMaxReceiveMessageSize(g.max_receive_message_bytes);
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, g.max_concurrent_streams);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                              g.min_ping_interval_seconds * 1000);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, g.max_ping_strikes);
  if (g.keepalive_seconds > 0) {
    builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, g.keepalive_seconds * 1000);
    builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                                g.keepalive_timeout_seconds * 1000);
  }
  if (g.max_connection_idle_seconds > 0) {
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                                g.max_connection_idle_seconds * 1000);
  }
  if (g.memory_limit_mb > 0) {
    grpc::ResourceQuota quota("tandemd");
    quota.Resize(static_cast<size_t>(g.memory_limit_mb) << 20);
    builder->SetResourceQuota(quota);
  }
}

absl::Status Server::StartPorts(const ServerOptions& options) {
  absl::StatusOr<std::string> listen = ConfineAddress(options.listen, options, "--listen");
  if (!listen.ok()) return listen.status();
  listen_ = *listen;
  if (!options.metrics_listen.empty()) {
    absl::StatusOr<std::string> metrics_listen =
        ConfineAddress(options.metrics_listen, options, "--metrics_listen");
    if (!metrics_listen.ok()) return metrics_listen.status();
    absl::StatusOr<std::unique_ptr<HttpEndpoint>> http =
        HttpEndpoint::Start(*metrics_listen, metrics_.get(), &readiness_, tls_.get());
    if (!http.ok()) {
      return absl::Status(http.status().code(),
                          absl::StrCat("metrics endpoint: ", http.status().message()));
    }
    http_ = *std::move(http);
  }
  loading_ = std::make_unique<LoadingService>();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen_,
                           tls_ ? tls_->GrpcCredentials() : grpc::InsecureServerCredentials(),
                           &port_);
  ConfigureBuilder(options, &builder);
  builder.RegisterCallbackGenericService(loading_.get());
  loading_server_ = builder.BuildAndStart();
  if (!loading_server_ || port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", listen_,
                                               " (address in use or not local?)"));
  }
  loading_server_->GetHealthCheckService()->SetServingStatus(false);
  return absl::OkStatus();
}

absl::Status Server::BuildServices(const ServerOptions& options) {
  const RegistryOptions registry_options{options.devices, options.max_sequences_per_device,
                                         options.max_images_per_device};
  absl::StatusOr<std::unique_ptr<ModelRegistry>> registry = ModelRegistry::Create(
      options.models_dir, options.default_model, registry_options, metrics_.get());
  if (!registry.ok()) return registry.status();
  registry_ = *std::move(registry);
  auto gauges = std::make_shared<ModelGauges>(metrics_.get(), registry_options);
  for (const auto& e : registry_->List()) gauges->Published(*e);
  registry_->AddListener([gauges](std::shared_ptr<const ModelEntry> e) { gauges->Published(*e); });

  WorkerPoolOptions pool_options;
  pool_options.max_pending = options.max_pending;
  pool_options.max_queue_per_model = options.max_queue_per_model;
  pool_options.train_budgets = TrainingBudgets(options);
  pool_options.loop.prefill_token_budget = options.prefill_token_budget;
  pool_options.loop.scheduler.train_min_share = options.train_min_share;
  pool_options.loop.train_execution = options.train_execution;
  absl::StatusOr<std::unique_ptr<WorkerPool>> pool =
      WorkerPool::Create(pool_options, registry_.get(), metrics_.get());
  if (!pool.ok()) return pool.status();
  pool_ = *std::move(pool);

  InferenceOptions inference_options;
  inference_options.limits = options.limits;
  inference_options.log_requests = options.log_requests;
  inference_options.max_request_time = absl::Seconds(options.grpc.max_request_seconds);
  inference_ = std::make_unique<InferenceService>(registry_.get(), pool_.get(), metrics_.get(),
                                                  auth_.get(), inference_options);
  const absl::Status training = StartTraining(options);
  training_ = std::make_unique<TrainingService>(train_manager_.get(), auth_.get(), training);
  return absl::OkStatus();
}

absl::Status Server::StartTraining(const ServerOptions& options) {
  // Training needs the state folder to itself and a job store that opens; without them the
  // server still serves, and every Training call says why training is off.
  if (options.state_dir.empty()) {
    return absl::FailedPreconditionError(
        "training is disabled: start tandemd with --state_dir (and --data_dir for datasets)");
  }
  absl::Status usable = LockStateDir(options.state_dir);
  if (usable.ok()) {
    TrainManagerOptions topts;
    topts.state_dir = options.state_dir;
    topts.data_dir = options.data_dir;
    topts.keep_checkpoints = options.keep_checkpoints;
    topts.train_slice = absl::Milliseconds(options.train_slice_ms);
    topts.peak_flops = options.peak_flops;
    absl::StatusOr<std::unique_ptr<TrainManager>> manager =
        TrainManager::Create(topts, registry_.get(), pool_.get(), metrics_.get());
    if (manager.ok()) {
      train_manager_ = *std::move(manager);
      return absl::OkStatus();
    }
    usable = manager.status();
  }
  absl::Status off =
      absl::FailedPreconditionError(absl::StrCat("training is disabled: ", usable.message()));
  std::fprintf(stderr, "tandemd: %s\n", std::string(off.message()).c_str());
  return off;
}

absl::Status Server::StartServing(const ServerOptions& options) {
  // The placeholder still listens: both sockets share the port until it stops.
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(WithPort(listen_, port_),
                           tls_ ? tls_->GrpcCredentials() : grpc::InsecureServerCredentials(),
                           &port);
  ConfigureBuilder(options, &builder);
  builder.RegisterService(inference_.get());
  builder.RegisterService(training_.get());
  grpc_server_ = builder.BuildAndStart();
  if (!grpc_server_ || port != port_) {
    return absl::UnavailableError(absl::StrCat("cannot take over port ", port_,
                                               " from the loading placeholder"));
  }
  grpc_server_->GetHealthCheckService()->SetServingStatus(true);
  readiness_.Set(Readiness::State::kServing);
  // Calls to the placeholder end at once (they were answered UNAVAILABLE already); channels
  // reconnect to the services.
  loading_server_->Shutdown(std::chrono::system_clock::now());
  loading_server_.reset();
  return absl::OkStatus();
}

absl::Status Server::Reload() {
  absl::Status status = auth_->Reload();
  if (tls_) {
    if (absl::Status s = tls_->Reload(); !s.ok() && status.ok()) status = s;
  }
  return status;
}

void Server::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  readiness_.Set(Readiness::State::kDraining);
  if (loading_server_) loading_server_->Shutdown(std::chrono::system_clock::now());
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

#include "server/api/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "models/torch/device.h"
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

namespace {

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

}  // namespace

Server::~Server() { Shutdown(absl::ZeroDuration()); }

int Server::metrics_port() const { return http_ ? http_->port() : 0; }

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const ServerOptions& options) {
  std::unique_ptr<Server> server(new Server());
  server->metrics_ = std::make_unique<Metrics>();

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
  pool_options.train_budgets = TrainingBudgets(options);
  pool_options.loop.prefill_token_budget = options.prefill_token_budget;
  pool_options.loop.scheduler.train_min_share = options.train_min_share;
  pool_options.loop.train_execution = options.train_execution;
  absl::StatusOr<std::unique_ptr<WorkerPool>> pool =
      WorkerPool::Create(pool_options, server->registry_.get(), server->metrics_.get());
  if (!pool.ok()) return pool.status();
  server->pool_ = *std::move(pool);

  server->inference_ = std::make_unique<InferenceService>(
      server->registry_.get(), server->pool_.get(), server->metrics_.get(), options.limits,
      options.log_requests);
  if (!options.state_dir.empty()) {
    TrainManagerOptions topts;
    topts.state_dir = options.state_dir;
    topts.data_dir = options.data_dir;
    topts.keep_checkpoints = options.keep_checkpoints;
    topts.train_slice = absl::Milliseconds(options.train_slice_ms);
    absl::StatusOr<std::unique_ptr<TrainManager>> manager = TrainManager::Create(
        topts, server->registry_.get(), server->pool_.get(), server->metrics_.get());
    if (!manager.ok()) {
      server->pool_->Stop();
      return manager.status();
    }
    server->train_manager_ = *std::move(manager);
  }
  server->training_ = std::make_unique<TrainingService>(server->train_manager_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &server->port_);
  builder.RegisterService(server->inference_.get());
  builder.RegisterService(server->training_.get());
  server->grpc_server_ = builder.BuildAndStart();
  if (!server->grpc_server_ || server->port_ == 0) {
    if (server->train_manager_) server->train_manager_->Stop();
    server->pool_->Stop();
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen,
                                               " (address in use or not local?)"));
  }
  server->grpc_server_->GetHealthCheckService()->SetServingStatus(true);

  if (!options.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<HttpEndpoint>> http =
        HttpEndpoint::Start(options.metrics_listen, server->metrics_.get());
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

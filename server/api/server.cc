#include "server/api/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "models/torch/device.h"
#include "server/api/build_info.h"
#include "server/api/http_endpoint.h"
#include "server/api/inference_service.h"
#include "server/api/loading_service.h"
#include "server/metrics/metrics.h"
#include "server/core/model_registry.h"
#include "server/jobs/train_spec.h"
#include "server/jobs/train_manager.h"
#include "server/api/training_service.h"
#include "server/core/worker_pool.h"

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

}  // namespace

Server::Server() = default;

Server::~Server() { Shutdown(absl::ZeroDuration()); }

int Server::metrics_port() const { return http_ ? http_->port() : 0; }

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const ServerOptions& options) {
  std::unique_ptr<Server> server(new Server());
  server->metrics_ = std::make_unique<Metrics>();
  server->metrics_->build_info
      .Add({{"version", BuildVersion()}, {"torch", TorchVersion()}, {"cuda", CudaRuntimeVersion()}})
      .Set(1);
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

absl::Status Server::StartPorts(const ServerOptions& options) {
  if (!options.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<HttpEndpoint>> http =
        HttpEndpoint::Start(options.metrics_listen, metrics_.get(), &readiness_);
    if (!http.ok()) {
      return absl::Status(http.status().code(),
                          absl::StrCat("metrics endpoint: ", http.status().message()));
    }
    http_ = *std::move(http);
  }
  loading_ = std::make_unique<LoadingService>();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &port_);
  builder.RegisterCallbackGenericService(loading_.get());
  loading_server_ = builder.BuildAndStart();
  if (!loading_server_ || port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen,
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

  inference_ = std::make_unique<InferenceService>(registry_.get(), pool_.get(), metrics_.get(),
                                                  options.limits, options.log_requests);
  if (!options.state_dir.empty()) {
    TrainManagerOptions topts;
    topts.state_dir = options.state_dir;
    topts.data_dir = options.data_dir;
    topts.keep_checkpoints = options.keep_checkpoints;
    topts.train_slice = absl::Milliseconds(options.train_slice_ms);
    topts.peak_flops = options.peak_flops;
    absl::StatusOr<std::unique_ptr<TrainManager>> manager =
        TrainManager::Create(topts, registry_.get(), pool_.get(), metrics_.get());
    if (!manager.ok()) return manager.status();
    train_manager_ = *std::move(manager);
  }
  training_ = std::make_unique<TrainingService>(train_manager_.get());
  return absl::OkStatus();
}

absl::Status Server::StartServing(const ServerOptions& options) {
  // The placeholder still listens: both sockets share the port until it stops.
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(WithPort(options.listen, port_), grpc::InsecureServerCredentials(),
                           &port);
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

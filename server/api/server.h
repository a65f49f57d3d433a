// Server: tandemd's parts wired together — model registry, worker pool (device loops), the gRPC
// services (Inference, Training, health, reflection) and the metrics endpoint. Tests create one
// in-process on port 0. Create starts everything; Shutdown stops it gracefully.
//
// Start-up, in order: the metrics endpoint (/healthz alive, /readyz 503) and the gRPC port, where
// a placeholder answers health NOT_SERVING and every other call UNAVAILABLE (LoadingService);
// then the models load; then the real services take over the same port (SO_REUSEPORT: no moment
// without a listener), health turns SERVING and /readyz 200. Shutdown turns both back first.
#ifndef TANDEM_SERVER_API_SERVER_H_
#define TANDEM_SERVER_API_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/api/readiness.h"
#include "server/api/validation.h"
#include "server/core/device_loop.h"

namespace grpc {
class CallbackGenericService;
class Server;
class Service;
}

namespace tandem {

class HttpEndpoint;
class InferenceService;
class Metrics;
class ModelRegistry;
class TrainManager;
class WorkerPool;

struct ServerOptions {
  std::string listen = "0.0.0.0:50051";  // port 0 picks a free port (see Server::port)
  std::string models_dir;
  std::string default_model;
  std::string data_dir;   // training datasets: a job's dataset is a path under it
  std::string state_dir;  // job database, checkpoints, trained models; empty disables training
  int keep_checkpoints = 3;          // newest checkpoints kept per job
  int64_t train_memory_limit_mb = 0; // estimated training memory allowed per job; 0: half the RAM
  std::string metrics_listen = "0.0.0.0:9090";  // empty disables the HTTP endpoint
  std::vector<std::string> devices = {"cpu"};
  int max_sequences_per_device = 32;
  int max_images_per_device = 16;
  int max_pending = 256;
  int max_queue_per_model = 128;
  // The device scheduler (see server/core/scheduler.h, device_loop.h).
  double train_min_share = 0.1;
  int train_slice_ms = 250;
  TrainExecution train_execution = TrainExecution::kBackground;
  int prefill_token_budget = 512;
  RequestLimits limits;
  bool log_requests = true;  // one line per Generate call on stderr
  double peak_flops = 0;     // per device, the MFU denominator; 0: measured at the first job
  // Called once the gRPC and metrics ports listen, before the models load, with their ports
  // (metrics 0 when disabled); Create waits for it to return.
  std::function<void(int port, int metrics_port)> on_loading;
};

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Create(const ServerOptions& options);
  ~Server();

  int port() const { return port_; }
  int metrics_port() const;
  ModelRegistry* registry() { return registry_.get(); }
  Metrics* metrics() { return metrics_.get(); }

  // Stops accepting calls (health turns NOT_SERVING), lets in-flight streams finish for at most
  // `grace`, cancels the rest, then stops the device loops. Idempotent.
  void Shutdown(absl::Duration grace);

 private:
  Server();
  // The steps of Create.
  absl::Status StartPorts(const ServerOptions& options);
  absl::Status BuildServices(const ServerOptions& options);
  absl::Status StartServing(const ServerOptions& options);

  Readiness readiness_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<grpc::Server> loading_server_;  // until the services take the port
  std::unique_ptr<grpc::CallbackGenericService> loading_;
  std::unique_ptr<ModelRegistry> registry_;
  std::unique_ptr<WorkerPool> pool_;
  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<TrainManager> train_manager_;
  std::unique_ptr<grpc::Service> training_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<HttpEndpoint> http_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_API_SERVER_H_

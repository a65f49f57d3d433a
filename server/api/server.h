// Server: tandemd's parts wired together — model registry, worker pool (device loops), the gRPC
// services (Inference, Training, health, reflection) and the metrics endpoint. Tests create one
// in-process on port 0. Create starts everything; Shutdown stops it gracefully.
//
// Start-up, in order: the metrics endpoint (/healthz alive, /readyz 503) and the gRPC port, where
// a placeholder answers health NOT_SERVING and every other call UNAVAILABLE (LoadingService);
// then the models load; then the real services take over the same port (SO_REUSEPORT: no moment
// without a listener), health turns SERVING and /readyz 200. Shutdown turns both back first.
//
// Security (auth.h, tls.h): with tls.cert both ports speak TLS (mutual TLS with tls.client_ca);
// with auth_tokens every tandem.v1 call needs a bearer token of the right scope (health and
// reflection stay open). A server with neither tokens nor client certificates authenticates no
// one, so it listens on loopback only: a wildcard address (0.0.0.0, [::]) becomes 127.0.0.1 and
// a specific other address is refused — unless insecure_allow_remote. Reload (SIGHUP) re-reads
// the tokens and the TLS files without dropping a stream.
//
// Hardening (GrpcLimits): message and metadata sizes, streams per connection, keepalive
// enforcement (a client pinging more often than allowed gets GOAWAY), idle connections closed, a
// memory quota for the transport, and a cap on how long a Generate call may run.
//
// Faults: a model folder that fails to load is not served (model_registry.h) and the rest is; a
// job store that does not open (damaged, locked, or a --state_dir another tandemd holds) turns
// training off — every Training call answers FAILED_PRECONDITION with the reason — while
// inference is served.
#ifndef TANDEM_SERVER_API_SERVER_H_
#define TANDEM_SERVER_API_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/api/readiness.h"
#include "server/api/tls.h"
#include "server/api/validation.h"
#include "server/core/device_loop.h"

namespace grpc {
class CallbackGenericService;
class Server;
class ServerBuilder;
class Service;
}

namespace tandem {

class Authenticator;
class HttpEndpoint;
class InferenceService;
class Metrics;
class ModelRegistry;
class TrainManager;
class WorkerPool;

// The gRPC transport's limits (tandemd flags of the same names).
struct GrpcLimits {
  int max_receive_message_bytes = 4 << 20;  // a request larger than this: RESOURCE_EXHAUSTED
  int max_concurrent_streams = 128;         // per connection (HTTP/2 SETTINGS)
  int min_ping_interval_seconds = 10;       // clients may ping at most this often...
  int max_ping_strikes = 2;                 // ...and after this many early pings get GOAWAY
  int keepalive_seconds = 60;               // the server pings idle connections this often
  int keepalive_timeout_seconds = 20;       // and closes those that do not answer
  int max_connection_idle_seconds = 300;    // connections without calls are closed after this
  int64_t memory_limit_mb = 1024;           // the transport's memory quota (0: unlimited)
  int max_request_seconds = 600;            // Generate calls end DEADLINE_EXCEEDED after this
};

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
  GrpcLimits grpc;
  bool log_requests = true;  // one line per Generate call on stderr
  double peak_flops = 0;     // per device, the MFU denominator; 0: measured at the first job
  // Called once the gRPC and metrics ports listen, before the models load, with their ports
  // (metrics 0 when disabled); Create waits for it to return.
  std::function<void(int port, int metrics_port)> on_loading;
  std::string auth_tokens;   // the tokens file (auth.h); empty: no tokens
  TlsFiles tls;              // empty cert: plaintext
  bool insecure_allow_remote = false;  // listen beyond loopback without authentication
};

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Create(const ServerOptions& options);
  ~Server();

  int port() const { return port_; }
  // The gRPC address actually listened on (after the loopback rule).
  const std::string& listen_address() const { return listen_; }
  int metrics_port() const;
  ModelRegistry* registry() { return registry_.get(); }
  Metrics* metrics() { return metrics_.get(); }
  WorkerPool* pool() { return pool_.get(); }

  // Re-reads the tokens file and the TLS files (SIGHUP). On an error the old ones stay in use
  // and the error says which file and why.
  absl::Status Reload();

  // Stops accepting calls (health turns NOT_SERVING), lets in-flight streams finish for at most
  // `grace`, cancels the rest, then stops the device loops. Idempotent.
  void Shutdown(absl::Duration grace);

 private:
  Server();
  // The steps of Create.
  absl::Status StartPorts(const ServerOptions& options);
  absl::Status BuildServices(const ServerOptions& options);
  absl::Status StartServing(const ServerOptions& options);
  // Opens the job layer when state_dir is set and free; OK, or the reason every Training call
  // gives while training is off.
  absl::Status StartTraining(const ServerOptions& options);

  // The gRPC and metrics addresses: wildcard hosts become 127.0.0.1 without authentication
  // (INVALID_ARGUMENT for a specific remote address then).
  static absl::StatusOr<std::string> ConfineAddress(const std::string& address,
                                                    const ServerOptions& options,
                                                    const char* flag);
  // The placeholder and the services listen with the same credentials and limits.
  void ConfigureBuilder(const ServerOptions& options, grpc::ServerBuilder* builder) const;
  // Takes --state_dir for this process (flock on state_dir/tandemd.lock, held until the server
  // is destroyed): FAILED_PRECONDITION naming the other tandemd's pid when it is taken.
  absl::Status LockStateDir(const std::string& state_dir);

  Readiness readiness_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<TlsMaterial> tls_;
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
  std::string listen_;
  int state_lock_fd_ = -1;
  bool shut_down_ = false;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_API_SERVER_H_

// HttpEndpoint: tandemd's HTTP side (cpp-httplib): GET /metrics (the Prometheus text format of
// everything in Metrics), /healthz (200 while the process runs: liveness) and /readyz (200 once
// the models are loaded and until shutdown begins, 503 with the reason otherwise; Readiness).
// prometheus-cpp's own pull Exposer (civetweb) cannot start
// in a process that links libtorch + OpenBLAS (thread stacks too small for their TLS), hence
// httplib. Start binds and starts the accept thread; the destructor stops and joins it.
// With TLS material the endpoint speaks HTTPS with the server's certificate (reloaded with it);
// with a client CA (mutual TLS) /metrics answers 403 to a connection without a client
// certificate the CA signed, while /healthz stays open to probes. Requests are small and quick:
// bodies over 1 KiB and connections silent for 5 s are dropped. Thread-safe.
#ifndef TANDEM_SERVER_API_HTTP_ENDPOINT_H_
#define TANDEM_SERVER_API_HTTP_ENDPOINT_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "server/api/readiness.h"
#include "server/metrics/metrics.h"

namespace httplib {
class Server;
}

namespace tandem {

class TlsMaterial;

class HttpEndpoint {
 public:
  // Serves on `listen` (HOST:PORT; port 0 picks a free one). `metrics`, `readiness` and `tls`
  // (null: plaintext) must outlive the endpoint. INVALID_ARGUMENT for a malformed address,
  // UNAVAILABLE when it cannot bind.
  static absl::StatusOr<std::unique_ptr<HttpEndpoint>> Start(const std::string& listen,
                                                             Metrics* metrics,
                                                             const Readiness* readiness,
                                                             TlsMaterial* tls = nullptr);
  ~HttpEndpoint();

  int port() const { return port_; }

 private:
  HttpEndpoint() = default;

  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_API_HTTP_ENDPOINT_H_

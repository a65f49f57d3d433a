#include "server/api/http_endpoint.h"

#include <httplib.h>

#include <chrono>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/api/tls.h"

namespace tandem {

absl::StatusOr<std::unique_ptr<HttpEndpoint>> HttpEndpoint::Start(const std::string& listen,
                                                                  Metrics* metrics,
                                                                  const Readiness* readiness,
                                                                  TlsMaterial* tls) {
  auto colon = listen.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics_listen=", listen, " is not HOST:PORT"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  std::unique_ptr<HttpEndpoint> endpoint(new HttpEndpoint());
  auto& http = endpoint->http_;
  if (tls) {
    auto https = std::make_unique<httplib::SSLServer>(
        [tls](SSL_CTX& ctx) { return tls->ConfigureHttps(&ctx); });
    if (!https->is_valid()) return absl::InternalError("cannot set up TLS for the metrics port");
    http = std::move(https);
  } else {
    http = std::make_unique<httplib::Server>();
  }
  const bool mutual = tls && tls->mutual();
  http->set_payload_max_length(1024);
  http->set_read_timeout(5, 0);
  http->set_write_timeout(5, 0);
  http->Get("/metrics", [metrics, mutual](const httplib::Request& req, httplib::Response& res) {
    if (mutual && !TlsMaterial::PeerVerified(req.ssl)) {
      res.status = 403;
      res.set_content("/metrics needs a client certificate signed by --tls_client_ca\n",
                      "text/plain");
      return;
    }
    res.set_content(metrics->Serialize(), "text/plain; version=0.0.4; charset=utf-8");
  });
  http->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  http->Get("/readyz", [readiness](const httplib::Request&, httplib::Response& res) {
    const absl::Status ready = readiness->Check();
    res.status = ready.ok() ? 200 : 503;
    res.set_content(ready.ok() ? std::string("ready\n") : absl::StrCat(ready.message(), "\n"),
                    "text/plain");
  });
  int bound = port;
  if (port == 0) {
    bound = http->bind_to_any_port(host.c_str());
  } else if (!http->bind_to_port(host.c_str(), port)) {
    bound = -1;
  }
  if (bound < 0) return absl::UnavailableError(absl::StrCat("cannot listen on ", listen));
  endpoint->port_ = bound;
  httplib::Server* raw = http.get();
  endpoint->thread_ = std::thread([raw] { raw->listen_after_bind(); });
  // httplib's stop() is a no-op until the accept loop runs, which would leave the destructor
  // joining a server that never stops: return only once it is running.
  for (int i = 0; i < 5000 && !raw->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return endpoint;
}

HttpEndpoint::~HttpEndpoint() {
  http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace tandem

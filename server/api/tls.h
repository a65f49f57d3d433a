// TLS for tandemd's two ports, from PEM files: --tls_cert (the server's certificate chain, leaf
// first), --tls_key (its private key) and, optionally, --tls_client_ca (a CA bundle: clients
// must then present a certificate it signed — mutual TLS).
//
// Load and Reload check the files before anything changes: the chain parses and has not
// expired, the key matches its first certificate, the CA bundle parses. Files that fail leave
// the material in use untouched (Reload returns why).
//
// gRPC: TlsServerCredentials over a FileWatcher provider reading a private copy of the files (a
// 0700 folder under $TMPDIR that Load makes and the destructor removes); Reload rewrites the
// copy and gRPC starts using it within kRefreshSeconds. Open connections keep their session:
// reloading drops no stream. With a client CA, a client without a certificate it signed fails
// the handshake.
// HTTP (metrics): ConfigureHttps installs a certificate callback on an OpenSSL server context
// that hands every new handshake the current pair; with a client CA, client certificates are
// requested and verified when presented, and PeerVerified tells a handler whether this
// connection presented a good one (so /healthz stays open to probes while /metrics requires it).
// Thread-safe.
#ifndef TANDEM_SERVER_API_TLS_H_
#define TANDEM_SERVER_API_TLS_H_

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace grpc {
class ServerCredentials;
}
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

namespace tandem {

struct TlsFiles {
  std::string cert;       // PEM chain, leaf first
  std::string key;        // PEM private key
  std::string client_ca;  // PEM bundle; empty: clients are not asked for certificates
};

class TlsMaterial {
 public:
  static constexpr int kRefreshSeconds = 1;

  // INVALID_ARGUMENT naming the file and what is wrong with it.
  static absl::StatusOr<std::unique_ptr<TlsMaterial>> Load(TlsFiles files);
  ~TlsMaterial();

  bool mutual() const { return !files_.client_ca.empty(); }
  const TlsFiles& files() const { return files_; }

  // Reads and checks the files again; on success new handshakes (both ports) use them.
  absl::Status Reload();

  // For the gRPC port (one per listening port).
  std::shared_ptr<grpc::ServerCredentials> GrpcCredentials();

  // Sets up `ctx` for the metrics port; false when OpenSSL refused.
  bool ConfigureHttps(SSL_CTX* ctx);
  // True when the connection presented a client certificate the client CA verified.
  static bool PeerVerified(const SSL* ssl);

  // The subject of the certificate in use (for the startup line).
  std::string subject() const;

 private:
  struct Parsed;  // OpenSSL objects of one generation of the files

  TlsMaterial(TlsFiles files, std::string staging);
  // Parses and checks one generation of the files.
  static absl::StatusOr<std::shared_ptr<const Parsed>> Parse(const TlsFiles& files,
                                                             const std::string& cert_pem,
                                                             const std::string& key_pem,
                                                             const std::string& ca_pem);
  absl::Status Stage(const std::string& cert_pem, const std::string& key_pem,
                     const std::string& ca_pem);
  static int CertCallback(SSL* ssl, void* self);

  const TlsFiles files_;
  const std::string staging_;  // the private copy gRPC watches
  mutable absl::Mutex mu_;
  std::shared_ptr<const Parsed> current_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem

#endif  // TANDEM_SERVER_API_TLS_H_

// How the tandem CLI and tandem-bench reach a server: plaintext, or TLS (--tls_ca: the CA to
// trust, else the system's roots; --tls_cert / --tls_key: a client certificate for mutual TLS),
// and a bearer token (--token_file, else $TANDEM_TOKEN) that every call carries as the metadata
// `authorization: Bearer TOKEN` — added by a client interceptor, so every stub and call made on
// the channel has it. Thread-safe once built.
#ifndef TANDEM_CLIENT_CHANNEL_H_
#define TANDEM_CLIENT_CHANNEL_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace tandem::client {

// What the security flags name, as given.
struct SecurityFlags {
  bool tls = false;        // TLS with the system's roots (implied by any of the three files)
  std::string tls_ca;      // PEM CA bundle the server's certificate must chain to
  std::string tls_cert;    // PEM client certificate (mutual TLS)
  std::string tls_key;     // its private key
  std::string token_file;  // a file holding the token (surrounding whitespace ignored)
};

// The flags' files read: the PEM texts and the token.
struct ChannelSecurity {
  bool tls = false;
  std::string root_pem;  // empty: the system's roots
  std::string cert_pem;
  std::string key_pem;
  std::string token;     // empty: no authorization metadata
};

// Reads the files `flags` names, then $TANDEM_TOKEN when there is no token file.
// INVALID_ARGUMENT naming the flag and the file.
absl::StatusOr<ChannelSecurity> LoadChannelSecurity(const SecurityFlags& flags);

// A channel to `server` (HOST:PORT) with `security`; `args` as for grpc::CreateCustomChannel.
std::shared_ptr<grpc::Channel> OpenSecureChannel(const std::string& server,
                                                 const ChannelSecurity& security,
                                                 const grpc::ChannelArguments& args);

}  // namespace tandem::client

#endif  // TANDEM_CLIENT_CHANNEL_H_

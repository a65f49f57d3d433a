// Who may call what: bearer tokens with scopes, read from the --auth_tokens file, checked by
// every tandem.v1 handler before it does anything (the health and reflection services stay open
// for probes and tools).
//
// The tokens file: one client per line, `NAME SCOPES TOKEN`, separated by spaces or tabs; blank
// lines and lines starting with '#' are ignored.
//   NAME    1-64 of letters, digits, '-', '_', '.', '@': the client. Training jobs record it as
//           their owner; the request log shows it. Unique in the file.
//   SCOPES  comma-separated: `inference` (Generate, ListModels), `train` (the Training RPCs, on
//           the caller's own jobs), `admin` (everything: every client's jobs, and publishing
//           models with deploy_as, which changes what every client is served).
//   TOKEN   the token itself (at least 16 characters: e.g. `openssl rand -hex 32`), or
//           `sha256:` and the 64 hex digits of its SHA-256, so the file need not hold the
//           secret. Unique in the file.
// A call carries the metadata `authorization: Bearer TOKEN`. The presented token's SHA-256 is
// compared with every entry's in constant time (all entries, no early exit), so neither the
// token nor its position leaks through timing. No token ever appears in a status, a log line or
// a metric.
//
// Without a tokens file every caller is the unnamed local admin; tandemd then listens on
// loopback only unless --insecure_allow_remote is given (server.h).
//
// Statuses: UNAUTHENTICATED (no token, a header that is not "Bearer TOKEN", an unknown token),
// PERMISSION_DENIED (a known client without the scope), both naming what to do. Thread-safe:
// Reload (SIGHUP) swaps the table atomically; a file that does not parse changes nothing.
#ifndef TANDEM_SERVER_API_AUTH_H_
#define TANDEM_SERVER_API_AUTH_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace grpc {
class ServerContextBase;
}

namespace tandem {

enum class Scope : uint8_t { kInference = 1, kTrain = 2, kAdmin = 4 };

// "inference", "train", "admin".
const char* ScopeName(Scope scope);

struct Caller {
  std::string name;     // the tokens file's NAME; empty without --auth_tokens
  uint8_t scopes = 0;   // Scope bits
  bool Has(Scope s) const {
    return (scopes & static_cast<uint8_t>(Scope::kAdmin)) || (scopes & static_cast<uint8_t>(s));
  }
  bool admin() const { return Has(Scope::kAdmin); }
};

struct TokenEntry {
  Caller client;
  std::array<uint8_t, 32> digest;  // SHA-256 of the token
};

// SHA-256 of `bytes`.
std::array<uint8_t, 32> Sha256(absl::string_view bytes);

// The entries of a tokens file's text. INVALID_ARGUMENT naming the line number and the problem
// (never the token). An empty file (no entries) is an error too: it would lock everyone out.
absl::StatusOr<std::vector<TokenEntry>> ParseTokens(absl::string_view text);

class Authenticator {
 public:
  // `tokens_file` empty: no authentication (every caller is the local admin). Otherwise the file
  // is read now (its errors are Create's).
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(const std::string& tokens_file);

  bool enabled() const { return !file_.empty(); }
  int clients() const;

  // Reads the file again (SIGHUP); on an error the old table stays and the error is returned.
  absl::Status Reload();

  // The caller behind `authorization` (the metadata value; nullopt when absent) if it may use
  // `scope`; `method` names the call in the messages ("Generate").
  absl::StatusOr<Caller> Authorize(std::optional<absl::string_view> authorization, Scope scope,
                                   absl::string_view method) const;
  // The same, from a gRPC call's metadata.
  absl::StatusOr<Caller> Authorize(const grpc::ServerContextBase& context, Scope scope,
                                   absl::string_view method) const;

 private:
  explicit Authenticator(std::string file) : file_(std::move(file)) {}

  const std::string file_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const std::vector<TokenEntry>> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem

#endif  // TANDEM_SERVER_API_AUTH_H_

#include "server/api/auth.h"

#include <grpcpp/server_context.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/confined_open.h"

namespace tandem {
namespace {

constexpr uint8_t kAllScopes = static_cast<uint8_t>(Scope::kInference) |
                               static_cast<uint8_t>(Scope::kTrain) |
                               static_cast<uint8_t>(Scope::kAdmin);
constexpr size_t kMinTokenChars = 16;

bool ValidClientName(absl::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.' &&
        c != '@') {
      return false;
    }
  }
  return true;
}

absl::Status LineError(int line, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("tokens file line ", line, ": ", problem));
}

absl::StatusOr<uint8_t> ParseScopes(absl::string_view text, int line) {
  uint8_t scopes = 0;
  for (absl::string_view s : absl::StrSplit(text, ',')) {
    if (s == "inference") {
      scopes |= static_cast<uint8_t>(Scope::kInference);
    } else if (s == "train") {
      scopes |= static_cast<uint8_t>(Scope::kTrain);
    } else if (s == "admin") {
      scopes |= static_cast<uint8_t>(Scope::kAdmin);
    } else {
      return LineError(line, absl::StrCat("unknown scope \"", absl::CEscape(s),
                                          "\" (the scopes are inference, train, admin)"));
    }
  }
  return scopes;
}

absl::StatusOr<std::array<uint8_t, 32>> ParseToken(absl::string_view token, int line) {
  std::array<uint8_t, 32> digest;
  if (absl::ConsumePrefix(&token, "sha256:")) {
    if (token.size() != 64 || !std::all_of(token.begin(), token.end(), [](char c) {
          return absl::ascii_isxdigit(static_cast<unsigned char>(c));
        })) {
      return LineError(line, "a sha256: token must be followed by 64 hex digits");
    }
    const std::string bytes = absl::HexStringToBytes(token);
    std::copy(bytes.begin(), bytes.end(), digest.begin());
    return digest;
  }
  if (token.size() < kMinTokenChars) {
    return LineError(line, absl::StrCat("the token is shorter than ", kMinTokenChars,
                                        " characters; make one with `openssl rand -hex 32`"));
  }
  for (char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return LineError(line, "a token must be printable ASCII without spaces");
    }
  }
  return Sha256(token);
}

std::string ScopeList(uint8_t scopes) {
  std::vector<std::string> names;
  for (Scope s : {Scope::kInference, Scope::kTrain, Scope::kAdmin}) {
    if (scopes & static_cast<uint8_t>(s)) names.push_back(ScopeName(s));
  }
  return absl::StrJoin(names, ",");
}

}  // namespace

const char* ScopeName(Scope scope) {
  switch (scope) {
    case Scope::kInference: return "inference";
    case Scope::kTrain: return "train";
    case Scope::kAdmin: return "admin";
  }
  return "unknown";
}

std::array<uint8_t, 32> Sha256(absl::string_view bytes) {
  std::array<uint8_t, 32> out{};
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), out.data(), &len, EVP_sha256(), nullptr);
  return out;
}

absl::StatusOr<std::vector<TokenEntry>> ParseTokens(absl::string_view text) {
  std::vector<TokenEntry> entries;
  std::map<std::string, int> names;
  std::map<std::array<uint8_t, 32>, int> digests;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    const std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 3) {
      return LineError(number, absl::StrCat("expected NAME SCOPES TOKEN (3 fields), found ",
                                            fields.size()));
    }
    if (!ValidClientName(fields[0])) {
      return LineError(number, "NAME must be 1-64 letters, digits, '-', '_', '.' or '@'");
    }
    TokenEntry entry;
    entry.client.name = std::string(fields[0]);
    absl::StatusOr<uint8_t> scopes = ParseScopes(fields[1], number);
    if (!scopes.ok()) return scopes.status();
    entry.client.scopes = *scopes;
    absl::StatusOr<std::array<uint8_t, 32>> digest = ParseToken(fields[2], number);
    if (!digest.ok()) return digest.status();
    entry.digest = *digest;
    if (auto [it, fresh] = names.emplace(entry.client.name, number); !fresh) {
      return LineError(number, absl::StrCat("client \"", entry.client.name,
                                            "\" is already on line ", it->second));
    }
    if (auto [it, fresh] = digests.emplace(entry.digest, number); !fresh) {
      return LineError(number, absl::StrCat("the token is already line ", it->second, "'s"));
    }
    entries.push_back(std::move(entry));
  }
  if (entries.empty()) {
    return absl::InvalidArgumentError("the tokens file names no client: every call would fail");
  }
  return entries;
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(
    const std::string& tokens_file) {
  std::unique_ptr<Authenticator> auth(new Authenticator(tokens_file));
  if (!tokens_file.empty()) {
    if (absl::Status s = auth->Reload(); !s.ok()) return s;
  }
  return auth;
}

int Authenticator::clients() const {
  absl::MutexLock lock(&mu_);
  return entries_ ? static_cast<int>(entries_->size()) : 0;
}

absl::Status Authenticator::Reload() {
  if (file_.empty()) return absl::OkStatus();
  absl::StatusOr<std::string> text = ReadFileBeneath("", file_);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat("--auth_tokens: ", text.status().message()));
  }
  absl::StatusOr<std::vector<TokenEntry>> entries = ParseTokens(*text);
  if (!entries.ok()) {
    return absl::Status(entries.status().code(),
                        absl::StrCat("--auth_tokens=", file_, ": ", entries.status().message()));
  }
  auto table = std::make_shared<const std::vector<TokenEntry>>(*std::move(entries));
  absl::MutexLock lock(&mu_);
  entries_ = std::move(table);
  return absl::OkStatus();
}

absl::StatusOr<Caller> Authenticator::Authorize(std::optional<absl::string_view> authorization,
                                                Scope scope, absl::string_view method) const {
  if (!enabled()) return Caller{"", kAllScopes};
  if (!authorization) {
    return absl::UnauthenticatedError(absl::StrCat(
        method, " needs a token: send the metadata \"authorization: Bearer TOKEN\" (tandem: "
                "--token_file or $TANDEM_TOKEN)"));
  }
  absl::string_view value = absl::StripAsciiWhitespace(*authorization);
  if (value.size() < 7 || !absl::EqualsIgnoreCase(value.substr(0, 7), "bearer ")) {
    return absl::UnauthenticatedError(
        "the authorization metadata must be \"Bearer TOKEN\"");
  }
  const std::array<uint8_t, 32> presented = Sha256(absl::StripLeadingAsciiWhitespace(value.substr(7)));
  std::shared_ptr<const std::vector<TokenEntry>> entries;
  {
    absl::MutexLock lock(&mu_);
    entries = entries_;
  }
  // Every entry is compared, whatever matched before: the time does not depend on where.
  const TokenEntry* found = nullptr;
  for (const TokenEntry& e : *entries) {
    const bool equal = CRYPTO_memcmp(e.digest.data(), presented.data(), presented.size()) == 0;
    if (equal) found = &e;
  }
  if (found == nullptr) {
    return absl::UnauthenticatedError(
        "the bearer token is not valid for this server (unknown, or revoked from its tokens "
        "file)");
  }
  if (!found->client.Has(scope)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "client \"", found->client.name, "\" (scopes: ", ScopeList(found->client.scopes),
        ") may not call ", method, ": it needs the ", ScopeName(scope), " scope"));
  }
  return found->client;
}

absl::StatusOr<Caller> Authenticator::Authorize(const grpc::ServerContextBase& context,
                                                Scope scope, absl::string_view method) const {
  if (!enabled()) return Caller{"", kAllScopes};
  const auto& metadata = context.client_metadata();
  auto [begin, end] = metadata.equal_range("authorization");
  if (begin == end) return Authorize(std::nullopt, scope, method);
  if (std::next(begin) != end) {
    return absl::UnauthenticatedError("send one authorization metadata entry, not several");
  }
  return Authorize(absl::string_view(begin->second.data(), begin->second.size()), scope, method);
}

}  // namespace tandem

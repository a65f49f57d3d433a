#include "client/channel.h"

#include <grpcpp/support/client_interceptor.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace tandem::client {
namespace {

absl::StatusOr<std::string> ReadFlagFile(const char* flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(flag, "=", path, ": cannot read it"));
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Adds the authorization metadata to every call.
class TokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit TokenInterceptor(const std::string* header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", *header_});
    }
    methods->Proceed();
  }

 private:
  const std::string* header_;
};

class TokenInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit TokenInterceptorFactory(std::string token) : header_("Bearer " + std::move(token)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* /*info*/) override {
    return new TokenInterceptor(&header_);
  }

 private:
  const std::string header_;  // lives as long as the channel, which owns the factory
};

}  // namespace

absl::StatusOr<ChannelSecurity> LoadChannelSecurity(const SecurityFlags& flags) {
  ChannelSecurity out;
  out.tls = flags.tls || !flags.tls_ca.empty() || !flags.tls_cert.empty() ||
            !flags.tls_key.empty();
  if (flags.tls_cert.empty() != flags.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together: give both");
  }
  struct File {
    const char* flag;
    const std::string& path;
    std::string* into;
  };
  for (const File& f : {File{"--tls_ca", flags.tls_ca, &out.root_pem},
                        File{"--tls_cert", flags.tls_cert, &out.cert_pem},
                        File{"--tls_key", flags.tls_key, &out.key_pem},
                        File{"--token_file", flags.token_file, &out.token}}) {
    if (f.path.empty()) continue;
    absl::StatusOr<std::string> text = ReadFlagFile(f.flag, f.path);
    if (!text.ok()) return text.status();
    *f.into = *std::move(text);
  }
  if (flags.token_file.empty()) {
    if (const char* env = std::getenv("TANDEM_TOKEN")) out.token = env;
  }
  out.token = std::string(absl::StripAsciiWhitespace(out.token));
  for (char c : out.token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          "the token (--token_file or $TANDEM_TOKEN) must be printable ASCII without spaces");
    }
  }
  return out;
}

std::shared_ptr<grpc::Channel> OpenSecureChannel(const std::string& server,
                                                 const ChannelSecurity& security,
                                                 const grpc::ChannelArguments& args) {
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (security.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = security.root_pem;
    ssl.pem_cert_chain = security.cert_pem;
    ssl.pem_private_key = security.key_pem;
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
  if (!security.token.empty()) {
    factories.push_back(std::make_unique<TokenInterceptorFactory>(security.token));
  }
  return grpc::experimental::CreateCustomChannelWithInterceptors(server, creds, args,
                                                                 std::move(factories));
}

}  // namespace tandem::client

// TLS material: the committed test PKI loads; a key that does not match its certificate, a file
// that is not PEM, half a pair, or a missing file is refused with the file named; a reload with
// a bad pair keeps the pair in use.
#include "server/api/tls.h"

#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/base/files.h"

namespace tandem {
namespace {

std::string Pki(const std::string& name) {
  return std::string(TANDEM_SOURCE_DIR) + "/tests/testdata/tls/" + name;
}

class TlsMaterialTest : public testing::TempDirTest {};

TEST_F(TlsMaterialTest, LoadsAPairAndACaBundle) {
  absl::StatusOr<std::unique_ptr<TlsMaterial>> tls =
      TlsMaterial::Load({Pki("server.pem"), Pki("server.key"), Pki("ca.pem")});
  ASSERT_TRUE(tls.ok()) << tls.status();
  EXPECT_TRUE((*tls)->mutual());
  EXPECT_EQ((*tls)->subject(), "/CN=tandem test server 1");
  EXPECT_NE((*tls)->GrpcCredentials(), nullptr);
}

TEST_F(TlsMaterialTest, RefusesWhatCannotServe) {
  struct Case {
    TlsFiles files;
    absl::StatusCode code;
    std::string expected;
  };
  testing::WriteAll(Path("junk.pem"), "not a certificate\n");
  for (const Case& c : std::vector<Case>{
           {{Pki("server.pem"), Pki("server2.key"), ""}, absl::StatusCode::kInvalidArgument,
            "does not match the certificate"},
           {{Path("junk.pem"), Pki("server.key"), ""}, absl::StatusCode::kInvalidArgument,
            "holds no PEM certificate"},
           {{Pki("server.pem"), Path("junk.pem"), ""}, absl::StatusCode::kInvalidArgument,
            "holds no unencrypted PEM private key"},
           {{Pki("server.pem"), Pki("server.key"), Path("junk.pem")},
            absl::StatusCode::kInvalidArgument, "--tls_client_ca"},
           {{Pki("server.pem"), "", ""}, absl::StatusCode::kInvalidArgument, "give both"},
           {{"", "", Pki("ca.pem")}, absl::StatusCode::kInvalidArgument, "needs --tls_cert"},
           {{Path("missing.pem"), Pki("server.key"), ""}, absl::StatusCode::kInvalidArgument,
            "does not exist"},
       }) {
    absl::StatusOr<std::unique_ptr<TlsMaterial>> tls = TlsMaterial::Load(c.files);
    ASSERT_FALSE(tls.ok()) << c.expected;
    EXPECT_EQ(tls.status().code(), c.code);
    EXPECT_NE(tls.status().message().find(c.expected), std::string::npos) << tls.status();
  }
}

TEST_F(TlsMaterialTest, ReloadWithABadPairKeepsThePairInUse) {
  std::filesystem::copy_file(Pki("server.pem"), Path("cert.pem"));
  std::filesystem::copy_file(Pki("server.key"), Path("key.pem"));
  absl::StatusOr<std::unique_ptr<TlsMaterial>> tls =
      TlsMaterial::Load({Path("cert.pem"), Path("key.pem"), ""});
  ASSERT_TRUE(tls.ok()) << tls.status();
  std::filesystem::copy_file(Pki("server2.pem"), Path("cert.pem"),
                             std::filesystem::copy_options::overwrite_existing);
  EXPECT_FALSE((*tls)->Reload().ok());
  EXPECT_EQ((*tls)->subject(), "/CN=tandem test server 1");
  std::filesystem::copy_file(Pki("server2.key"), Path("key.pem"),
                             std::filesystem::copy_options::overwrite_existing);
  ASSERT_TRUE((*tls)->Reload().ok());
  EXPECT_EQ((*tls)->subject(), "/CN=tandem test server 2");
}

}  // namespace
}  // namespace tandem

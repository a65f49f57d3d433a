// Bearer tokens: the tokens file's rules, the statuses a call gets, constant-time lookup over
// every entry, reloads that keep the old table on a bad file, and no token in any message.
#include "server/api/auth.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "tests/testing/base/files.h"

namespace tandem {
namespace {

std::string Hex(const std::array<uint8_t, 32>& d) {
  std::string out;
  for (uint8_t b : d) absl::StrAppendFormat(&out, "%02x", b);
  return out;
}

TEST(TokensFileTest, ParsesNamesScopesAndBothTokenForms) {
  const std::string text = absl::StrCat(
      "# comment\n\n", "alice inference,train alice-secret-token-1234\n",
      "  bob\tadmin\tsha256:", Hex(Sha256("bob-secret-token-12345")), "  \r\n");
  absl::StatusOr<std::vector<TokenEntry>> entries = ParseTokens(text);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 2u);
  EXPECT_EQ((*entries)[0].client.name, "alice");
  EXPECT_TRUE((*entries)[0].client.Has(Scope::kTrain));
  EXPECT_FALSE((*entries)[0].client.admin());
  EXPECT_EQ((*entries)[0].digest, Sha256("alice-secret-token-1234"));
  EXPECT_EQ((*entries)[1].client.name, "bob");
  EXPECT_TRUE((*entries)[1].client.Has(Scope::kInference)) << "admin implies every scope";
  EXPECT_EQ((*entries)[1].digest, Sha256("bob-secret-token-12345"));
}

TEST(TokensFileTest, BadLinesNameTheLineAndNeverTheToken) {
  const std::string secret = "the-secret-token-0123456789";
  struct Case {
    std::string text;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {absl::StrCat("alice inference ", secret, " extra\n"), "line 1: expected NAME SCOPES"},
           {absl::StrCat("\nalice fly ", secret, "\n"), "line 2: unknown scope \"fly\""},
           {absl::StrCat("al/ice inference ", secret, "\n"), "line 1: NAME must be"},
           {"alice inference short\n", "shorter than 16 characters"},
           {"alice inference sha256:abcd\n", "64 hex digits"},
           {absl::StrCat("a inference ", secret, "\nb train ", secret, "\n"),
            "line 2: the token is already line 1's"},
           {absl::StrCat("a inference ", secret, "\na train x", secret, "\n"),
            "line 2: client \"a\" is already on line 1"},
           {"# nobody\n", "names no client"},
       }) {
    absl::StatusOr<std::vector<TokenEntry>> entries = ParseTokens(c.text);
    ASSERT_FALSE(entries.ok()) << c.text;
    EXPECT_EQ(entries.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(entries.status().message().find(c.expected), std::string::npos)
        << entries.status();
    EXPECT_EQ(entries.status().message().find(secret), std::string::npos) << entries.status();
  }
}

class AuthenticatorTest : public testing::TempDirTest {
 protected:
  std::unique_ptr<Authenticator> Make(const std::string& text) {
    testing::WriteAll(Path("tokens"), text);
    absl::StatusOr<std::unique_ptr<Authenticator>> auth = Authenticator::Create(Path("tokens"));
    EXPECT_TRUE(auth.ok()) << auth.status();
    return auth.ok() ? *std::move(auth) : nullptr;
  }
};

TEST_F(AuthenticatorTest, StatusesForEachWayACallCanFail) {
  auto auth = Make("alice inference alice-secret-token-1234\nroot admin root-secret-token-12345\n");
  ASSERT_TRUE(auth);
  EXPECT_TRUE(auth->enabled());
  absl::StatusOr<Caller> c =
      auth->Authorize(std::string("Bearer alice-secret-token-1234"), Scope::kInference, "Generate");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->name, "alice");
  // The scheme is case-insensitive.
  EXPECT_TRUE(auth->Authorize(std::string("bearer alice-secret-token-1234"), Scope::kInference, "G")
                  .ok());

  absl::Status s = auth->Authorize(std::nullopt, Scope::kInference, "Generate").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(s.message().find("Generate needs a token"), std::string::npos);
  s = auth->Authorize(std::string("alice-secret-token-1234"), Scope::kInference, "G").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(s.message().find("alice-secret"), std::string::npos);
  s = auth->Authorize(std::string("Bearer alice-secret-token-1235"), Scope::kInference, "G").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(s.message().find("alice-secret"), std::string::npos);
  s = auth->Authorize(std::string("Bearer alice-secret-token-1234"), Scope::kTrain,
                      "SubmitTrainJob")
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(s.message(),
            "client \"alice\" (scopes: inference) may not call SubmitTrainJob: it needs the train "
            "scope");
  c = auth->Authorize(std::string("Bearer root-secret-token-12345"), Scope::kTrain, "X");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->admin());
}

TEST_F(AuthenticatorTest, WithoutAFileEveryCallerIsTheLocalAdmin) {
  absl::StatusOr<std::unique_ptr<Authenticator>> auth = Authenticator::Create("");
  ASSERT_TRUE(auth.ok());
  EXPECT_FALSE((*auth)->enabled());
  absl::StatusOr<Caller> c = (*auth)->Authorize(std::nullopt, Scope::kAdmin, "X");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->admin());
  EXPECT_EQ(c->name, "");
}

TEST_F(AuthenticatorTest, ReloadSwapsTheTableOrKeepsItOnABadFile) {
  auto auth = Make("alice inference alice-secret-token-1234\n");
  ASSERT_TRUE(auth);
  testing::WriteAll(Path("tokens"), "bob inference bob-secret-token-123456\n");
  ASSERT_TRUE(auth->Reload().ok());
  EXPECT_FALSE(auth->Authorize(std::string("Bearer alice-secret-token-1234"), Scope::kInference, "G")
                   .ok());
  EXPECT_TRUE(auth->Authorize(std::string("Bearer bob-secret-token-123456"), Scope::kInference, "G")
                  .ok());
  testing::WriteAll(Path("tokens"), "bob inference\n");
  absl::Status s = auth->Reload();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(auth->Authorize(std::string("Bearer bob-secret-token-123456"), Scope::kInference, "G")
                  .ok());
  std::filesystem::remove(Path("tokens"));
  EXPECT_FALSE(auth->Reload().ok());
  EXPECT_EQ(auth->clients(), 1);
}

TEST_F(AuthenticatorTest, CreateFailsOnAMissingOrBadFile) {
  absl::StatusOr<std::unique_ptr<Authenticator>> missing = Authenticator::Create(Path("nope"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  testing::WriteAll(Path("tokens"), "alice nope alice-secret-token-1234\n");
  EXPECT_EQ(Authenticator::Create(Path("tokens")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem

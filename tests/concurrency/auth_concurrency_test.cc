// The pieces other threads share while calls are served: the token table swapped by SIGHUP while
// every handler authorizes, and the I/O fault rules armed while writers consult them. Run under
// ThreadSanitizer in CI (scripts/sanitize.sh).
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/io_faults.h"
#include "gtest/gtest.h"
#include "server/api/auth.h"
#include "tests/testing/base/files.h"

namespace tandem {
namespace {

class AuthConcurrencyTest : public testing::TempDirTest {};

TEST_F(AuthConcurrencyTest, ReloadsWhileCallsAreAuthorized) {
  const std::string token = "alice-secret-token-1234";
  testing::WriteAll(Path("tokens"), absl::StrCat("alice inference ", token, "\n"));
  absl::StatusOr<std::unique_ptr<Authenticator>> auth = Authenticator::Create(Path("tokens"));
  ASSERT_TRUE(auth.ok());
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&] {
      while (!stop.load()) {
        if (!(*auth)->Authorize("Bearer " + token, Scope::kInference, "Generate").ok()) ++failures;
      }
    });
  }
  // Alternate two files that both keep alice: every call must pass throughout.
  for (int i = 0; i < 200; ++i) {
    testing::WriteAll(Path("tokens"), absl::StrCat("alice inference ", token, "\n",
                                                   i % 2 ? "bob train bob-secret-token-12345\n" : ""));
    ASSERT_TRUE((*auth)->Reload().ok());
  }
  stop = true;
  for (auto& t : callers) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(IoFaultConcurrencyTest, RulesArmedWhileWritersConsultThem) {
  std::atomic<bool> stop{false};
  std::atomic<int64_t> faults{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&] {
      while (!stop.load()) {
        if (IoFault("write", "/state/checkpoints/x") != 0) ++faults;
      }
    });
  }
  for (int i = 0; i < 500; ++i) {
    ASSERT_TRUE(ArmIoFaults(i % 2 ? "write@checkpoints=ENOSPC:times=3" : "fsync=EIO").ok());
  }
  // The writers see the rules in force: with one that always fires, they fail.
  ASSERT_TRUE(ArmIoFaults("write=EIO").ok());
  for (int i = 0; i < 10000 && faults.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  stop = true;
  for (auto& t : writers) t.join();
  DisarmIoFaults();
  EXPECT_GT(faults.load(), 0);
}

}  // namespace
}  // namespace tandem

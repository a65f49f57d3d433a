// Injected I/O faults: rules match points and path substrings, skip and count hits, and a
// malformed rule is refused with the rule named.
#include "base/io_faults.h"

#include <errno.h>

#include "gtest/gtest.h"

namespace tandem {
namespace {

class IoFaultsTest : public ::testing::Test {
 protected:
  void TearDown() override { DisarmIoFaults(); }
};

TEST_F(IoFaultsTest, UnarmedNothingFails) {
  EXPECT_EQ(IoFault("write", "/any/path"), 0);
}

TEST_F(IoFaultsTest, RulesMatchPointPathAndCount) {
  ASSERT_TRUE(ArmIoFaults("write@checkpoints/=ENOSPC:after=1:times=2; fsync=EIO").ok());
  EXPECT_EQ(IoFault("write", "/s/jobs/j/models/x"), 0) << "path does not match";
  EXPECT_EQ(IoFault("write", "/s/checkpoints/a"), 0) << "after=1 lets the first through";
  EXPECT_EQ(IoFault("write", "/s/checkpoints/b"), ENOSPC);
  EXPECT_EQ(IoFault("write", "/s/checkpoints/c"), ENOSPC);
  EXPECT_EQ(IoFault("write", "/s/checkpoints/d"), 0) << "times=2 is spent";
  EXPECT_EQ(IoFault("fsync", "/anything"), EIO);
  EXPECT_EQ(IoFault("fsync", "/anything"), EIO) << "no times: every time";
  EXPECT_EQ(IoFault("rename", "/anything"), 0);
  EXPECT_EQ(IoFaultsFired(), 4);
  DisarmIoFaults();
  EXPECT_EQ(IoFault("fsync", "/anything"), 0);
}

TEST_F(IoFaultsTest, StarMatchesEveryPoint) {
  ASSERT_TRUE(ArmIoFaults("*@jobs.db=EIO").ok());
  EXPECT_EQ(IoFault("sqlite.sync", "/s/jobs.db-wal"), EIO);
  EXPECT_EQ(IoFault("write", "/s/jobs.db"), EIO);
  EXPECT_EQ(IoFault("write", "/s/other"), 0);
}

TEST_F(IoFaultsTest, KillRuleKillsTheProcess) {
  ASSERT_TRUE(ArmIoFaults("rename=KILL").ok());
  EXPECT_EXIT(IoFault("rename", "/x"), ::testing::KilledBySignal(SIGKILL), "SIGKILL at rename");
}

TEST_F(IoFaultsTest, MalformedRulesAreRefusedAndChangeNothing) {
  ASSERT_TRUE(ArmIoFaults("write=EIO").ok());
  for (const char* bad : {"write", "=EIO", "write=EPERM", "write=EIO:after=x", "write=EIO:every=2"}) {
    absl::Status s = ArmIoFaults(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(IoFault("write", "/x"), EIO) << "the rules in force stayed";
}

}  // namespace
}  // namespace tandem

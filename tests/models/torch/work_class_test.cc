#include "models/torch/work_class.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <iterator>
#include <thread>

namespace tandem {
namespace {

// Threads of this process now.
int ThreadCount() {
  const std::filesystem::directory_iterator tasks("/proc/self/task");
  return static_cast<int>(std::distance(tasks, std::filesystem::directory_iterator()));
}

// The count once it equals `want`, or after a second of waiting for it: a released worker
// leaves the team at once but takes a moment to be gone from /proc.
int ThreadCountSettlingAt(int want) {
  int n = ThreadCount();
  for (int i = 0; i < 100 && n != want; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    n = ThreadCount();
  }
  return n;
}

TEST(WorkClassTest, ReleaseThreadTeamEndsTheCallersIdleWorkersAndTheNextRegionStartsANewTeam) {
  if (std::thread::hardware_concurrency() < 2) GTEST_SKIP() << "a team needs two cores here";
  std::thread([] {
    const int before = ThreadCount();
    // Setting the class runs a parallel region: this thread now leads a team of workers.
    ASSERT_TRUE(SetThreadWorkClass(WorkClass::kForeground, "cpu").ok());
    const int with_team = ThreadCount();
    EXPECT_GT(with_team, before);
    ReleaseThreadTeam();
    EXPECT_EQ(ThreadCountSettlingAt(before), before);
    ReleaseThreadTeam();  // no team: nothing to do
    EXPECT_EQ(ThreadCount(), before);
    ASSERT_TRUE(SetThreadWorkClass(WorkClass::kForeground, "cpu").ok());
    EXPECT_EQ(ThreadCount(), with_team);
    ReleaseThreadTeam();
    EXPECT_EQ(ThreadCountSettlingAt(before), before);
  }).join();
}

}  // namespace
}  // namespace tandem

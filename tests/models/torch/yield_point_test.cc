#include "models/torch/yield_point.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "absl/time/clock.h"

namespace tandem {
namespace {

TEST(YieldPointTest, WithoutAGateAYieldPointNeverWaits) {
  std::thread([] {
    TrainGate closed;
    closed.Close();  // not this thread's gate
    TrainYieldPoint();
    EXPECT_EQ(ThreadPausedTime(), absl::ZeroDuration());
  }).join();
}

TEST(YieldPointTest, AThreadWaitsAtItsYieldPointWhileItsGateIsClosed) {
  TrainGate gate;
  gate.Close();
  std::atomic<bool> passed{false};
  absl::Duration paused;
  std::thread unit([&] {
    SetThreadTrainGate(&gate);
    TrainYieldPoint();
    passed = true;
    paused = ThreadPausedTime();
    TrainYieldPoint();  // open now: passes
  });
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(passed);
  gate.Open();
  unit.join();
  EXPECT_TRUE(passed);
  EXPECT_GE(paused, absl::Milliseconds(40));
}

}  // namespace
}  // namespace tandem

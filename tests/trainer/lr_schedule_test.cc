// The learning-rate schedule (trainer/lr_schedule.h): linear warmup, then cosine decay to min_lr
// at the last step.
#include "trainer/lr_schedule.h"

#include <cmath>
#include <cstdint>

#include "gtest/gtest.h"

namespace tandem {
namespace {

Hyperparams Schedule(int64_t steps, int64_t warmup, double lr = 1e-3, double min_lr = 1e-4) {
  Hyperparams h;
  h.steps = steps;
  h.warmup_steps = warmup;
  h.lr = lr;
  h.min_lr = min_lr;
  return h;
}

TEST(LearningRateTest, WarmupRisesLinearlyToThePeak) {
  const Hyperparams h = Schedule(/*steps=*/100, /*warmup=*/10, /*lr=*/3e-3);
  for (int64_t s = 0; s < 10; ++s) {
    // Exactly lr * (s + 1) / warmup: step 0 already trains, at lr / warmup.
    EXPECT_EQ(LearningRate(h, s), 3e-3 * static_cast<double>(s + 1) / 10.0) << s;
  }
  EXPECT_DOUBLE_EQ(LearningRate(h, 9), 3e-3);  // the last warmup step reaches the peak
}

TEST(LearningRateTest, PeakAtTheFirstStepAfterWarmup) {
  const Hyperparams h = Schedule(100, 10, 2e-3, 2e-4);
  EXPECT_DOUBLE_EQ(LearningRate(h, 10), 2e-3);  // p = 0: cos(0) = 1
  EXPECT_LT(LearningRate(h, 11), LearningRate(h, 10));
}

TEST(LearningRateTest, CosineMidpointIsHalfwayBetweenPeakAndFloor) {
  // span = steps - 1 - warmup = 100: the midpoint step is warmup + 50.
  const Hyperparams h = Schedule(111, 10, 1e-3, 1e-4);
  EXPECT_NEAR(LearningRate(h, 60), (1e-3 + 1e-4) / 2, 1e-15);
  // A quarter of the way: min + (lr - min) * (1 + cos(pi / 4)) / 2.
  EXPECT_NEAR(LearningRate(h, 35), 1e-4 + 9e-4 * (1 + std::cos(M_PI / 4)) / 2, 1e-15);
}

TEST(LearningRateTest, MinLrExactlyAtTheLastStepAndAfter) {
  const Hyperparams h = Schedule(50, 5, 1e-3, 1e-5);
  EXPECT_EQ(LearningRate(h, 49), 1e-5);  // cos(pi) = -1 exactly
  EXPECT_EQ(LearningRate(h, 50), 1e-5);  // past the end: clamped, not rising again
  EXPECT_EQ(LearningRate(h, 1000), 1e-5);
}

TEST(LearningRateTest, DecayIsMonotonicAfterWarmup) {
  const Hyperparams h = Schedule(200, 20);
  for (int64_t s = 0; s + 1 < 20; ++s) EXPECT_LT(LearningRate(h, s), LearningRate(h, s + 1)) << s;
  for (int64_t s = 20; s + 1 < 200; ++s) {
    EXPECT_GT(LearningRate(h, s), LearningRate(h, s + 1)) << s;
    EXPECT_GE(LearningRate(h, s + 1), h.min_lr) << s;
  }
}

TEST(LearningRateTest, NoWarmupStartsAtThePeak) {
  const Hyperparams h = Schedule(10, 0, 1e-3, 1e-4);
  EXPECT_DOUBLE_EQ(LearningRate(h, 0), 1e-3);
  EXPECT_EQ(LearningRate(h, 9), 1e-4);
  for (int64_t s = 0; s < 10; ++s) EXPECT_TRUE(std::isfinite(LearningRate(h, s))) << s;
  // A negative warmup is treated as none.
  Hyperparams negative = h;
  negative.warmup_steps = -5;
  for (int64_t s = 0; s < 10; ++s) EXPECT_EQ(LearningRate(negative, s), LearningRate(h, s)) << s;
}

TEST(LearningRateTest, SingleStepRunsAtThePeak) {
  // steps - 1 - warmup = 0: the span is clamped to 1, so the one step gets lr, not min_lr.
  EXPECT_DOUBLE_EQ(LearningRate(Schedule(1, 0, 5e-4, 1e-5), 0), 5e-4);
}

}  // namespace
}  // namespace tandem

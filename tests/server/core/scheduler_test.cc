// SchedulerPolicy with a fake clock: inference first, training in idle time, training's minimum
// share under saturation.
#include "server/core/scheduler.h"

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using Decision = SchedulerPolicy::Decision;
using Work = SchedulerPolicy::Work;

const absl::Time kStart = absl::FromUnixSeconds(1700000000);

TEST(SchedulerPolicyTest, InferenceFirstTrainingInIdleTime) {
  SchedulerPolicy p({/*train_min_share=*/0.1, absl::Seconds(2)});
  // Nothing to do.
  EXPECT_EQ(p.Decide(false, false, false, kStart), Decision::kIdle);
  // Only training: dispatch it; with a unit in flight, wait for work.
  EXPECT_EQ(p.Decide(false, true, false, kStart), Decision::kDispatchTrain);
  EXPECT_EQ(p.Decide(false, false, true, kStart), Decision::kIdle);
  // Inference arrives while training ran a lot: inference runs (the unit keeps going beside it).
  p.Record(Work::kTrain, absl::Seconds(1), kStart + absl::Seconds(1));
  EXPECT_EQ(p.Decide(true, false, true, kStart + absl::Seconds(1)), Decision::kRunInference);
  EXPECT_EQ(p.Decide(true, true, false, kStart + absl::Seconds(1)), Decision::kRunInference);
}

TEST(SchedulerPolicyTest, UnderSaturationTrainingGetsItsMinimumShare) {
  SchedulerPolicy p({/*train_min_share=*/0.2, absl::Seconds(2)});
  // Inference always runnable; simulate 60 s of the loop: inference iterations of 10 ms,
  // training units of 20 ms when the policy asks for them.
  absl::Time now = kStart;
  absl::Duration train = absl::ZeroDuration(), inference = absl::ZeroDuration();
  bool in_flight = false;
  while (now < kStart + absl::Seconds(60)) {
    switch (p.Decide(true, !in_flight, in_flight, now)) {
      case Decision::kRunInference:
        now += absl::Milliseconds(10);
        p.Record(Work::kInference, absl::Milliseconds(10), now);
        inference += absl::Milliseconds(10);
        break;
      case Decision::kDispatchTrain:
        in_flight = true;
        break;
      case Decision::kWaitForTrain:
        now += absl::Milliseconds(20);
        p.Record(Work::kTrain, absl::Milliseconds(20), now);
        train += absl::Milliseconds(20);
        in_flight = false;
        break;
      case Decision::kIdle:
        FAIL() << "inference is always runnable";
    }
  }
  const double share = absl::FDivDuration(train, train + inference);
  EXPECT_GE(share, 0.18);
  EXPECT_LE(share, 0.25);
  EXPECT_NEAR(p.train_share(now), 0.2, 0.05);
}

TEST(SchedulerPolicyTest, ZeroMinimumShareStarvesTrainingUnderSaturation) {
  SchedulerPolicy p({/*train_min_share=*/0, absl::Seconds(2)});
  for (int i = 0; i < 100; ++i) {
    const absl::Time now = kStart + absl::Milliseconds(10 * i);
    EXPECT_EQ(p.Decide(true, true, false, now), Decision::kRunInference);
    p.Record(Work::kInference, absl::Milliseconds(10), now);
  }
}

TEST(SchedulerPolicyTest, TheShareIsRecentNotSinceStart) {
  SchedulerPolicy p({/*train_min_share=*/0.1, absl::Seconds(2)});
  // A long training-only stretch, then a minute of saturation: the old training time has
  // decayed, so the share is owed again.
  p.Record(Work::kTrain, absl::Seconds(600), kStart);
  EXPECT_FALSE(p.share_owed(kStart));
  const absl::Time later = kStart + absl::Seconds(60);
  for (int i = 0; i < 600; ++i) {
    p.Record(Work::kInference, absl::Milliseconds(100), kStart + absl::Milliseconds(100 * (i + 1)));
  }
  EXPECT_TRUE(p.share_owed(later));
  EXPECT_LT(p.train_share(later), 0.01);
}

}  // namespace
}  // namespace tandem

#include "server/jobs/time_budget.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

namespace tandem {
namespace {

constexpr int64_t kUnplanned = 100000000;

// A job under a fake clock: step s (from first_step + 1 on) takes seconds(t) where t is the
// clock when it starts; the job follows every change until its last step.
struct SimulatedRun {
  int64_t last_step = 0;
  double end_seconds = 0;
  std::vector<std::string> log;
};

SimulatedRun Simulate(TimeBudget* budget, int64_t first_step, int64_t total,
             const std::function<double(double)>& seconds) {
  const absl::Time start = absl::UnixEpoch();
  double t = 0;
  SimulatedRun run;
  budget->Observe(first_step, start, total);  // the run's first step anchors its clock
  for (int64_t step = first_step + 1; step <= total; ++step) {
    t += seconds(t);
    if (auto change = budget->Observe(step, start + absl::Seconds(t), total)) {
      total = change->total_steps;
      run.log.push_back(change->why);
    }
    run.last_step = step;
  }
  run.end_seconds = t;
  return run;
}

TEST(TimeBudgetTest, ASteadyRatePlansOnceAndEndsAtTheBudget) {
  TimeBudget budget(100, /*planned=*/false);
  const SimulatedRun run = Simulate(&budget, 0, kUnplanned, [](double) { return 1.0; });
  EXPECT_EQ(run.last_step, 100);
  EXPECT_DOUBLE_EQ(run.end_seconds, 100);
  ASSERT_EQ(run.log.size(), 1u);  // the re-plans would move the end by nothing
  EXPECT_NE(run.log[0].find("planned 100 steps"), std::string::npos) << run.log[0];
}

TEST(TimeBudgetTest, ASlowFirstTenthIsReplannedAtHalf) {
  // 2 s a step for the first 10 s (another job still held the device), then 1 s.
  TimeBudget budget(100, /*planned=*/false);
  const SimulatedRun run =
      Simulate(&budget, 0, kUnplanned, [](double t) { return t < 10 ? 2.0 : 1.0; });
  ASSERT_EQ(run.log.size(), 2u);
  EXPECT_NE(run.log[0].find("planned 50 steps"), std::string::npos) << run.log[0];
  EXPECT_NE(run.log[1].find("at 50%: 1000.0 ms a step since the last plan, re-planned 95 steps "
                            "(was 50)"),
            std::string::npos)
      << run.log[1];
  EXPECT_EQ(run.last_step, 95);  // without the re-plan: step 50 at 55 s of 100
  EXPECT_DOUBLE_EQ(run.end_seconds, 100);
}

TEST(TimeBudgetTest, ADeviceThatGetsBusierIsReplannedAtHalfAndThreeQuarters) {
  // 1 s a step for 20 s, then 2 s (requests arrived): at half the rate since the plan is a mix
  // (1.6 s), at three quarters it is the new one, and the job ends at its budget.
  TimeBudget budget(100, /*planned=*/false);
  const SimulatedRun run =
      Simulate(&budget, 0, kUnplanned, [](double t) { return t < 20 ? 1.0 : 2.0; });
  ASSERT_EQ(run.log.size(), 3u);
  EXPECT_NE(run.log[0].find("planned 100 steps"), std::string::npos) << run.log[0];
  EXPECT_NE(run.log[1].find("at 50%: 1600.0 ms a step since the last plan, re-planned 66 steps "
                            "(was 100)"),
            std::string::npos)
      << run.log[1];
  EXPECT_NE(run.log[2].find("at 75%: 2000.0 ms a step since the last plan, re-planned 60 steps "
                            "(was 66)"),
            std::string::npos)
      << run.log[2];
  EXPECT_EQ(run.last_step, 60);
  EXPECT_DOUBLE_EQ(run.end_seconds, 100);
}

TEST(TimeBudgetTest, ASlowdownAfterTheLastReplanIsCutAtTheBudget) {
  // 1 s a step until 92 s, then 3 s: no re-plan sees it, the budget's end cuts the job.
  TimeBudget budget(100, /*planned=*/false);
  const SimulatedRun run =
      Simulate(&budget, 0, kUnplanned, [](double t) { return t < 92 ? 1.0 : 3.0; });
  ASSERT_EQ(run.log.size(), 2u);
  EXPECT_NE(run.log[0].find("planned 100 steps"), std::string::npos) << run.log[0];
  EXPECT_NE(run.log[1].find("reached at step 95: finishing"), std::string::npos) << run.log[1];
  EXPECT_EQ(run.last_step, 96);
  EXPECT_DOUBLE_EQ(run.end_seconds, 104);  // the step that ends past the budget finishes
}

TEST(TimeBudgetTest, AResumedJobKeepsItsPlanAtTheSameRate) {
  // Planned 100 steps at 1 s a step, stopped at step 50, resumed: the 50 earlier steps count as
  // 50 s at this run's rate, so the plan still ends at the budget and nothing changes.
  TimeBudget budget(100, /*planned=*/true);
  const SimulatedRun run = Simulate(&budget, 50, 100, [](double) { return 1.0; });
  EXPECT_TRUE(run.log.empty()) << run.log[0];
  EXPECT_EQ(run.last_step, 100);
  EXPECT_DOUBLE_EQ(run.end_seconds, 50);
}

TEST(TimeBudgetTest, AResumedJobOnASlowerDeviceIsCut) {
  // The same job resumed on a device at 2 s a step: its earlier 50 steps count as 100 s, the
  // whole budget, so it ends after the 5 steps the rate takes to measure.
  TimeBudget budget(100, /*planned=*/true);
  const SimulatedRun run = Simulate(&budget, 50, 100, [](double) { return 2.0; });
  ASSERT_EQ(run.log.size(), 1u);
  EXPECT_NE(run.log[0].find("reached at step 51"), std::string::npos) << run.log[0];
  EXPECT_EQ(run.last_step, 52);
}

TEST(TimeBudgetTest, NoPlanBeforeFiveStepsAndFiveSeconds) {
  // 3 s a step, budget 20: a tenth is 2 s but the plan waits for 5 s and 5 steps (15 s).
  TimeBudget budget(20, /*planned=*/false);
  const SimulatedRun run = Simulate(&budget, 0, kUnplanned, [](double) { return 3.0; });
  ASSERT_FALSE(run.log.empty());
  EXPECT_NE(run.log[0].find("planned 6 steps"), std::string::npos) << run.log[0];
  EXPECT_EQ(run.last_step, 6);
}

}  // namespace
}  // namespace tandem

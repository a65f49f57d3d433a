// TimeBudget: the steps of a job that trains for a wall-clock budget (Hyperparameters.max_seconds),
// planned from the rate the job measures on its device, which the device's other work changes:
//   1. the plan: at 10% of the budget (at least 5 s and 5 steps into this run), the steps left
//      at this run's rate so far;
//   2. re-plans at 1/2, 3/4 and 9/10 of the budget: the steps left at the rate since the last
//      (re-)plan (the first tenth may have shared the device with another job or a burst of
//      requests, or ran alone and the device got busier since); a re-plan that moves the end by
//      under 2% is not made, so the schedule does not twitch;
//   3. the cut: at the budget, a job slower than planned ends at its next step.
// Budget spent = this run's seconds + the earlier runs' steps at this run's rate (a resumed job
// counts the time it trained before, not the time it sat paused). Torch-free and pure: the caller
// passes the clock, so the policy is tested with a fake one.
#ifndef TANDEM_SERVER_JOBS_TIME_BUDGET_H_
#define TANDEM_SERVER_JOBS_TIME_BUDGET_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/time/time.h"

namespace tandem {

// The `steps` of a time-budgeted job (max_seconds > 0) before its plan: the most steps a job may
// have; its runner replaces it with the planned number early in the run.
inline constexpr int64_t kUnplannedSteps = 100000000;

class TimeBudget {
 public:
  // budget_seconds > 0. planned: an earlier run of the job already planned its steps (a resumed
  // job keeps that plan and only re-plans and cuts).
  TimeBudget(double budget_seconds, bool planned);

  struct Change {
    int64_t total_steps;  // the job's new last step
    std::string why;      // for the job's log
  };

  // Called after every step (`step` just ended at `now`; `total_steps` the current plan). Returns
  // the plan's change, if any.
  std::optional<Change> Observe(int64_t step, absl::Time now, int64_t total_steps);

 private:
  const double budget_;
  bool planned_;
  bool done_ = false;
  int replans_ = 0;              // re-plan points passed
  int64_t run_first_step_ = -1;  // the step this run started from
  absl::Time run_start_;         // when that step ended
  int64_t plan_step_ = -1;       // the next re-plan's rate is measured from here
  absl::Time plan_time_;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_JOBS_TIME_BUDGET_H_

#include "server/jobs/time_budget.h"

#include <algorithm>
#include <cmath>
#include <iterator>

#include "absl/strings/str_format.h"

namespace tandem {
namespace {

// The steps that fit in the seconds left at `per_step` seconds a step, at least one more.
int64_t StepsToEnd(int64_t step, double left, double per_step) {
  return std::max(step + 1, step + static_cast<int64_t>(std::max(0.0, left) / per_step));
}

}  // namespace

TimeBudget::TimeBudget(double budget_seconds, bool planned)
    : budget_(budget_seconds), planned_(planned) {}

std::optional<TimeBudget::Change> TimeBudget::Observe(int64_t step, absl::Time now,
                                                      int64_t total_steps) {
  static constexpr double kReplanAt[] = {0.5, 0.75, 0.9};  // fractions of the budget
  if (run_first_step_ < 0) {
    run_first_step_ = plan_step_ = step;
    run_start_ = plan_time_ = now;
    return std::nullopt;
  }
  if (done_ || step == run_first_step_) return std::nullopt;
  const double ran = absl::ToDoubleSeconds(now - run_start_);
  const double per_step = ran / static_cast<double>(step - run_first_step_);
  const double spent = ran + per_step * static_cast<double>(run_first_step_);
  if (!planned_) {
    if (spent < std::max(5.0, 0.1 * budget_) || step - run_first_step_ < 5) return std::nullopt;
    planned_ = true;
    plan_step_ = step;
    plan_time_ = now;
    const int64_t planned = StepsToEnd(step, budget_ - spent, per_step);
    return Change{planned, absl::StrFormat("time budget %.0f s: %.1f ms a step so far, planned %d "
                                           "steps", budget_, 1000 * per_step, planned)};
  }
  if (spent >= budget_) {
    done_ = true;
    if (step + 1 >= total_steps) return std::nullopt;
    // Slower than planned (the device served more): end at the budget all the same.
    return Change{step + 1, absl::StrFormat("time budget %.0f s reached at step %d: finishing",
                                            budget_, step)};
  }
  if (replans_ == static_cast<int>(std::size(kReplanAt)) ||
      spent < kReplanAt[replans_] * budget_ || step - plan_step_ < 5) {
    return std::nullopt;
  }
  const double fraction = kReplanAt[replans_++];
  const double recent =
      absl::ToDoubleSeconds(now - plan_time_) / static_cast<double>(step - plan_step_);
  plan_step_ = step;
  plan_time_ = now;
  const int64_t planned = StepsToEnd(step, budget_ - spent, recent);
  if (std::abs(static_cast<double>(planned - total_steps)) <
      0.02 * static_cast<double>(total_steps)) {
    return std::nullopt;
  }
  return Change{planned, absl::StrFormat("time budget %.0f s at %.0f%%: %.1f ms a step since the "
                                         "last plan, re-planned %d steps (was %d)",
                                         budget_, 100 * fraction, 1000 * recent, planned,
                                         total_steps)};
}

}  // namespace tandem

#include "server/core/scheduler.h"

#include <cmath>

namespace tandem {

void SchedulerPolicy::DecayTo(absl::Time now) const {
  if (last_ == absl::InfinitePast()) {
    last_ = now;
    return;
  }
  if (now <= last_) return;
  const double f = std::exp2(-absl::FDivDuration(now - last_, options_.half_life));
  inference_seconds_ *= f;
  train_seconds_ *= f;
  last_ = now;
}

void SchedulerPolicy::Record(Work work, absl::Duration took, absl::Time now) {
  DecayTo(now);
  (work == Work::kTrain ? train_seconds_ : inference_seconds_) += absl::ToDoubleSeconds(took);
}

double SchedulerPolicy::train_share(absl::Time now) const {
  DecayTo(now);
  const double total = inference_seconds_ + train_seconds_;
  return total > 0 ? train_seconds_ / total : 0;
}

bool SchedulerPolicy::share_owed(absl::Time now) const {
  return options_.train_min_share > 0 && train_share(now) < options_.train_min_share;
}

SchedulerPolicy::Decision SchedulerPolicy::Decide(bool inference_runnable, bool train_runnable,
                                                  bool train_in_flight, absl::Time now) {
  if (!inference_runnable) {
    return train_runnable && !train_in_flight ? Decision::kDispatchTrain : Decision::kIdle;
  }
  if ((train_runnable || train_in_flight) && share_owed(now)) {
    return train_in_flight ? Decision::kWaitForTrain : Decision::kDispatchTrain;
  }
  return Decision::kRunInference;
}

}  // namespace tandem

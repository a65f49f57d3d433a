// SchedulerPolicy: what a device loop does next, between online inference and training.
// Inference first: training runs when no inference work is runnable, and otherwise only when
// its guaranteed minimum share of device time is owed (so it progresses under saturation).
// Training runs in units (a chunk of a micro-step, a chunk of an evaluation) on the loop's
// executor; while a unit is in flight the loop may still run inference — the executor's
// background priority lets inference preempt it — except when the share is owed, when the loop
// waits for the unit.
//
// Share: the training fraction of the device time the loop has recorded, both decayed with a
// half-life (so the guarantee holds over the last seconds, not since start). Pure and torch-
// free; the caller supplies the time, so tests drive it with a fake clock. Not thread-safe (the
// loop thread owns it).
#ifndef TANDEM_SERVER_CORE_SCHEDULER_H_
#define TANDEM_SERVER_CORE_SCHEDULER_H_

#include "absl/time/time.h"

namespace tandem {

struct SchedulerOptions {
  // Fraction of device time training gets when inference would take it all; 0 disables the
  // guarantee (training only in idle time), 1 would starve inference.
  double train_min_share = 0.1;
  absl::Duration half_life = absl::Seconds(2);
};

class SchedulerPolicy {
 public:
  enum class Decision {
    kRunInference,   // one iteration of each inference workload with work
    kDispatchTrain,  // hand the next training unit to the executor
    kWaitForTrain,   // block until the unit in flight is done (training's share is owed)
    kIdle,           // nothing to start: sleep until work arrives or the unit ends
  };
  enum class Work { kInference, kTrain };

  explicit SchedulerPolicy(SchedulerOptions options) : options_(options) {}

  // train_runnable: a training unit could start (none is in flight and the task has work).
  Decision Decide(bool inference_runnable, bool train_runnable, bool train_in_flight,
                  absl::Time now);
  // Device time spent (an inference iteration's, a training unit's), ending at `now`.
  void Record(Work work, absl::Duration took, absl::Time now);
  // Training's fraction of the decayed device time (0 when nothing ran yet).
  double train_share(absl::Time now) const;
  bool share_owed(absl::Time now) const;

 private:
  void DecayTo(absl::Time now) const;

  const SchedulerOptions options_;
  mutable double inference_seconds_ = 0;  // decayed to last_
  mutable double train_seconds_ = 0;
  mutable absl::Time last_ = absl::InfinitePast();
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_SCHEDULER_H_

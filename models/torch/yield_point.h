// Yield points: where a training unit running beside inference may pause. A device loop closes
// its TrainGate while it runs inference and opens it when it stops (or when it waits for
// training); a unit on the executor thread, which obeys that gate, waits at its next yield point
// while the gate is closed. The training nets call TrainYieldPoint at every layer boundary of the
// forward pass and of the backward pass, so a unit stops within one layer's work of inference
// starting, and the inference that runs meanwhile has the cores, caches and memory bandwidth to
// itself (a unit at background priority still ran in every gap the loop left: in the
// microseconds between decode steps, and on the other core while the loop ran serial code).
// Pausing changes no arithmetic: a unit's results are the same whatever the interleaving.
// Torch-free. Thread-safe.
#ifndef TANDEM_MODELS_TORCH_YIELD_POINT_H_
#define TANDEM_MODELS_TORCH_YIELD_POINT_H_

#include <atomic>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tandem {

class TrainGate {
 public:
  // From one thread (the loop's); cheap when the gate is already so.
  void Close();  // units pause at their next yield point
  void Open();   // paused units go on
  bool closed() const { return closed_.load(std::memory_order_acquire); }
  // Blocks while the gate is closed; returns how long it waited.
  absl::Duration Wait();

 private:
  absl::Mutex mu_;                   // written under it, so that waiters see the gate open
  std::atomic<bool> closed_{false};  // read without it: a yield point's fast path
};

// The gate the calling thread's yield points obey; nullptr (the default): they never wait.
// The gate must outlive the setting.
void SetThreadTrainGate(TrainGate* gate);

// Waits while the calling thread's gate is closed (a no-op without one). Cheap when open.
void TrainYieldPoint();

// Time the calling thread has spent waiting at yield points (to subtract from a unit's time).
absl::Duration ThreadPausedTime();

}  // namespace tandem

#endif  // TANDEM_MODELS_TORCH_YIELD_POINT_H_

#include "models/torch/yield_point.h"

#include "models/torch/work_class.h"

namespace tandem {
namespace {

thread_local TrainGate* thread_gate = nullptr;
thread_local absl::Duration thread_paused;

}  // namespace

void TrainGate::Close() {
  if (closed()) return;
  absl::MutexLock lock(&mu_);
  closed_.store(true, std::memory_order_release);
}

void TrainGate::Open() {
  if (!closed()) return;
  absl::MutexLock lock(&mu_);
  closed_.store(false, std::memory_order_release);
}

absl::Duration TrainGate::Wait() {
  if (!closed()) return absl::ZeroDuration();
  const absl::Time t0 = absl::Now();
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(+[](std::atomic<bool>* closed) { return !closed->load(); }, &closed_));
  return absl::Now() - t0;
}

void SetThreadTrainGate(TrainGate* gate) { thread_gate = gate; }

void TrainYieldPoint() {
  if (thread_gate == nullptr || !thread_gate->closed()) return;
  // Inference has the device. This thread's OpenMP team, idle while it waits, goes too: with it
  // gone, inference's team spin-waits between its parallel regions instead of sleeping.
  ReleaseThreadTeam();
  thread_paused += thread_gate->Wait();
}

absl::Duration ThreadPausedTime() { return thread_paused; }

}  // namespace tandem

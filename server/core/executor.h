// Executor: the thread a device loop runs its training work on. One closure at a time; the
// thread is marked with a WorkClass at start (kBackground: SCHED_IDLE on the CPU, a low-priority
// CUDA stream), so the loop's own inference work preempts it at once, in the kernel or on the
// GPU. Run() never blocks the caller; `on_done` runs on the executor thread when the closure has
// returned (the loop uses it to wake up). With `inline_work` there is no thread: Run() runs the
// closure on the caller's thread (cooperative scheduling, for comparison). Thread-safe.
#ifndef TANDEM_SERVER_CORE_EXECUTOR_H_
#define TANDEM_SERVER_CORE_EXECUTOR_H_

#include <functional>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "models/torch/work_class.h"

namespace tandem {

class Executor {
 public:
  // `on_done` is called after each closure, on the thread that ran it. `work` is the class the
  // thread runs in unless a closure asks for another.
  Executor(std::string device, WorkClass work, bool inline_work, std::function<void()> on_done);
  ~Executor();  // waits for the closure in flight, then joins

  // Runs `fn` in work class `work` (e.g. kForeground for a unit the loop waits for, which must
  // not yield to everything else on the machine); false (fn dropped) while another closure is in
  // flight.
  bool Run(absl::AnyInvocable<void()> fn, WorkClass work);
  bool Run(absl::AnyInvocable<void()> fn) { return Run(std::move(fn), work_); }
  bool busy() const;

 private:
  void Loop();

  const std::string device_;
  const WorkClass work_;
  const bool inline_;
  const std::function<void()> on_done_;
  mutable absl::Mutex mu_;
  absl::AnyInvocable<void()> next_ ABSL_GUARDED_BY(mu_);
  WorkClass next_work_ ABSL_GUARDED_BY(mu_) = WorkClass::kBackground;
  WorkClass current_ = WorkClass::kForeground;  // the thread's, as last set (executor thread)
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_EXECUTOR_H_

#include "server/core/executor.h"

#include <cstdio>
#include <utility>

namespace tandem {

Executor::Executor(std::string device, WorkClass work, bool inline_work,
                   std::function<void()> on_done)
    : device_(std::move(device)), work_(work), inline_(inline_work), on_done_(std::move(on_done)) {
  if (!inline_) thread_ = std::thread([this] { Loop(); });
}

Executor::~Executor() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

bool Executor::Run(absl::AnyInvocable<void()> fn, WorkClass work) {
  {
    absl::MutexLock lock(&mu_);
    if (busy_ || stopping_) return false;
    busy_ = true;
    if (!inline_) {
      next_ = std::move(fn);
      next_work_ = work;
      return true;
    }
  }
  fn();
  {
    absl::MutexLock lock(&mu_);
    busy_ = false;
  }
  if (on_done_) on_done_();
  return true;
}

bool Executor::busy() const {
  absl::MutexLock lock(&mu_);
  return busy_;
}

void Executor::Loop() {
  bool warned = false;
  while (true) {
    absl::AnyInvocable<void()> fn;
    WorkClass work;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return next_ != nullptr || stopping_;
      };
      mu_.Await(absl::Condition(&ready));
      if (next_ == nullptr) return;  // stopping, nothing in flight
      fn = std::move(next_);
      next_ = nullptr;
      work = next_work_;
    }
    if (work != current_) {
      absl::Status s = SetThreadWorkClass(work, device_);
      if (s.ok()) {
        current_ = work;
      } else if (!warned) {
        warned = true;
        std::fprintf(stderr, "tandemd: training on %s keeps its priority: %s\n", device_.c_str(),
                     s.ToString().c_str());
      }
    }
    fn();
    // Until the next closure the loop's inference may run alone: it spins rather than sleeps
    // between parallel regions only if this thread's idle OpenMP team is gone.
    ReleaseThreadTeam();
    {
      absl::MutexLock lock(&mu_);
      busy_ = false;
    }
    if (on_done_) on_done_();
  }
}

}  // namespace tandem

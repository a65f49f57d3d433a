// DeviceHold: stops a device loop at a known point, for tests of what happens while work waits
// — queue caps, deadlines passing in the queue, cancels in a chosen window. Hold() posts a task
// that blocks the loop thread until Release(); `after` iterations pass first (the task re-posts
// itself that many times), so a request submitted before Hold(n) has gone through n loop
// iterations when the hold begins. The destructor releases.
#ifndef TANDEM_TESTS_SERVER_DEVICE_HOLD_H_
#define TANDEM_TESTS_SERVER_DEVICE_HOLD_H_

#include <functional>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/core/device_loop.h"

namespace tandem::testing {

class DeviceHold {
 public:
  explicit DeviceHold(DeviceLoop* loop) : loop_(loop) {}
  ~DeviceHold() { Release(); }

  // Blocks the loop after `after` more iterations; returns once it is blocked (false on
  // timeout). `on_hold` runs on the loop thread just before it blocks.
  bool Hold(int after = 0, std::function<void()> on_hold = nullptr) {
    on_hold_ = std::move(on_hold);
    Post(after);
    return held_.WaitForNotificationWithTimeout(absl::Seconds(30));
  }
  void Release() {
    if (!release_.HasBeenNotified()) release_.Notify();
  }

  // Runs `fn` on the loop thread at its next iteration and waits for it.
  static void RunOnLoop(DeviceLoop* loop, std::function<void()> fn) {
    absl::Notification done;
    loop->Post([&] {
      fn();
      done.Notify();
    });
    done.WaitForNotification();
  }

 private:
  void Post(int remaining) {
    loop_->Post([this, remaining] {
      if (remaining > 0) {
        Post(remaining - 1);  // runs in the next iteration's batch
        return;
      }
      if (on_hold_) on_hold_();
      held_.Notify();
      release_.WaitForNotification();
    });
  }

  DeviceLoop* loop_;
  std::function<void()> on_hold_;
  absl::Notification held_;
  absl::Notification release_;
};

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_SERVER_DEVICE_HOLD_H_

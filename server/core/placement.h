// Placement: the one policy that puts work on the server's devices — online requests and
// training jobs alike. It keeps, per device, the requests in hand, the training job running
// there (one at most) and its reserved training memory, and the device's training-memory budget.
//
//   - A request goes to the device with the fewest requests in hand; among equals, one that is
//     not training (training yields to inference anyway, but a quiet device is quieter still).
//   - A job goes to a device with no job whose training budget holds its estimated memory,
//     the least loaded by requests first. A job that fits no device's budget at all can never
//     run (RESOURCE_EXHAUSTED at submission); one that fits but finds every fitting device busy
//     waits in the queue.
//
// Pure bookkeeping, no threads of its own; thread-safe.
#ifndef TANDEM_SERVER_CORE_PLACEMENT_H_
#define TANDEM_SERVER_CORE_PLACEMENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace tandem {

class Placement {
 public:
  // One budget per device: the training memory (bytes) a job there may use; <= 0: unlimited.
  explicit Placement(std::vector<int64_t> train_budgets);

  int devices() const { return static_cast<int>(devices_.size()); }

  // The device for a new request; counts it there until RequestEnded.
  int PlaceRequest();
  void RequestEnded(int device);
  int requests(int device) const;
  int total_requests() const;

  // OK when some device's budget holds `bytes` (the job can run one day), else
  // RESOURCE_EXHAUSTED naming the largest budget.
  absl::Status CheckJobFits(int64_t bytes) const;
  // The device for job `id` needing `bytes`, reserved until JobEnded; -1 when every device that
  // could hold it is busy with another job.
  int PlaceJob(const std::string& id, int64_t bytes);
  void JobEnded(int device);
  // The job on `device`, or "".
  std::string job(int device) const;

 private:
  struct Device {
    int64_t train_budget = 0;
    int requests = 0;
    std::string job;
    int64_t job_bytes = 0;
  };
  bool Fits(const Device& d, int64_t bytes) const {
    return d.train_budget <= 0 || bytes <= d.train_budget;
  }

  mutable absl::Mutex mu_;
  std::vector<Device> devices_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_PLACEMENT_H_

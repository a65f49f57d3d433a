// WorkerPool: the server's devices — one DeviceLoop per device of the registry — and the door to
// them: online requests and training jobs are placed by one policy (Placement). Requests are
// refused at once, never queued without bound: RESOURCE_EXHAUSTED past --max_pending in hand,
// or past --max_queue_per_model waiting for one model (with a retry hint), each refusal counted
// by reason (tandem_requests_rejected_total). Owns the loops.
// Thread-safe.
#ifndef TANDEM_SERVER_CORE_WORKER_POOL_H_
#define TANDEM_SERVER_CORE_WORKER_POOL_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/core/device_loop.h"
#include "server/core/placement.h"

namespace tandem {

// The status payload (absl::Status::GetPayload) of a RESOURCE_EXHAUSTED answer: milliseconds
// after which a retry is likely to be admitted, as decimal text.
inline constexpr char kRetryAfterMsPayload[] = "tandem.dev/retry-after-ms";

struct WorkerPoolOptions {
  // Requests in hand (running + waiting) across the pool past which Submit answers
  // RESOURCE_EXHAUSTED.
  int max_pending = 256;
  // Requests waiting for a device per model past which Submit answers RESOURCE_EXHAUSTED, with
  // a retry hint (kRetryAfterMsPayload).
  int max_queue_per_model = 128;
  DeviceLoopOptions loop;  // for every loop; device and device_index are set per loop
  // Training memory a job may use on each device (bytes; <= 0 unlimited), in device order; a
  // single value applies to every device.
  std::vector<int64_t> train_budgets;
};

class WorkerPool {
 public:
  // One loop per device of the registry (RegistryOptions::devices), in that order.
  static absl::StatusOr<std::unique_ptr<WorkerPool>> Create(const WorkerPoolOptions& options,
                                                            ModelRegistry* registry,
                                                            Metrics* metrics);
  ~WorkerPool();

  // Takes the request, or returns RESOURCE_EXHAUSTED (the request is untouched) when the pool
  // or the model's queue is full, UNAVAILABLE once stopping.
  absl::Status Submit(std::unique_ptr<TextRequest>& request);
  absl::Status Submit(std::unique_ptr<ImageRequest>& request);
  std::vector<std::string> devices() const;
  int size() const { return static_cast<int>(loops_.size()); }
  DeviceLoop* loop(int i) const { return loops_[i].get(); }
  Placement& placement() { return *placement_; }
  int pending() const { return placement_->total_requests(); }
  // Finishes every request still in a loop with UNAVAILABLE and joins the loops.
  void Stop();

 private:
  // Per model: requests waiting for a device, and the mean time a request takes.
  struct ModelQueue {
    std::atomic<int> waiting{0};
    double mean_seconds = 0;  // guarded by the pool's mu_
  };

  WorkerPool() = default;
  template <typename Request>
  absl::Status Place(std::unique_ptr<Request>& request);
  // Checks the caps and, when the request may come in, counts it in its model's queue.
  absl::Status AdmitToQueue(DeviceRequest& request);
  // tandem_requests_rejected_total{model, reason}.
  void CountRejected(const DeviceRequest& request, const char* reason);
  std::shared_ptr<ModelQueue> QueueOf(const std::string& model);

  WorkerPoolOptions options_;
  ModelRegistry* registry_ = nullptr;
  Metrics* metrics_ = nullptr;  // may be null
  std::unique_ptr<Placement> placement_;
  std::vector<std::unique_ptr<DeviceLoop>> loops_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> in_hand_{0};  // requests admitted and not yet ended (the --max_pending cap)
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<ModelQueue>> queues_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_WORKER_POOL_H_

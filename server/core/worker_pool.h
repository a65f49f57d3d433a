// WorkerPool: one DeviceLoop per device, and the choice of which loop gets a request (the one
// with the fewest requests in hand). Owns the loops. Thread-safe.
#ifndef TANDEM_SERVER_CORE_WORKER_POOL_H_
#define TANDEM_SERVER_CORE_WORKER_POOL_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/core/device_loop.h"

namespace tandem {

struct WorkerPoolOptions {
  // Requests in hand (running + waiting) across the pool past which Submit answers
  // RESOURCE_EXHAUSTED.
  int max_pending = 256;
  int prefill_token_budget = 1024;
};

class WorkerPool {
 public:
  // One loop per device of the registry (RegistryOptions::devices), in that order.
  static absl::StatusOr<std::unique_ptr<WorkerPool>> Create(const WorkerPoolOptions& options,
                                                            ModelRegistry* registry,
                                                            Metrics* metrics);
  ~WorkerPool();

  // Takes the request, or returns RESOURCE_EXHAUSTED (the request is untouched) when the pool
  // is full, UNAVAILABLE once stopping.
  absl::Status Submit(std::unique_ptr<TextRequest>& request);
  absl::Status Submit(std::unique_ptr<ImageRequest>& request);
  std::vector<std::string> devices() const;
  // The device loops, in --devices order (training jobs run their micro-steps on them).
  int size() const { return static_cast<int>(loops_.size()); }
  DeviceLoop* loop(int i) const { return loops_[i].get(); }
  int pending() const;
  // Finishes every request still in a loop with UNAVAILABLE and joins the loops.
  void Stop();

 private:
  WorkerPool() = default;
  // The least-loaded loop, or the reason none may take another request.
  absl::StatusOr<DeviceLoop*> Choose() const;
  WorkerPoolOptions options_;
  std::vector<std::unique_ptr<DeviceLoop>> loops_;
  std::atomic<bool> stopping_{false};
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_WORKER_POOL_H_

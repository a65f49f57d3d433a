#include "server/core/worker_pool.h"

#include "absl/strings/str_cat.h"

namespace tandem {

absl::StatusOr<std::unique_ptr<WorkerPool>> WorkerPool::Create(const WorkerPoolOptions& options,
                                                               ModelRegistry* registry,
                                                               Metrics* metrics) {
  std::unique_ptr<WorkerPool> pool(new WorkerPool());
  pool->options_ = options;
  const std::vector<std::string>& devices = registry->options().devices;
  for (int i = 0; i < static_cast<int>(devices.size()); ++i) {
    DeviceLoopOptions lo;
    lo.device = devices[i];
    lo.device_index = i;
    lo.prefill_token_budget = options.prefill_token_budget;
    absl::StatusOr<std::unique_ptr<DeviceLoop>> loop = DeviceLoop::Create(lo, registry, metrics);
    if (!loop.ok()) return loop.status();
    pool->loops_.push_back(*std::move(loop));
  }
  return pool;
}

WorkerPool::~WorkerPool() { Stop(); }

absl::StatusOr<DeviceLoop*> WorkerPool::Choose() const {
  if (stopping_.load()) return absl::UnavailableError("the server is shutting down");
  if (pending() >= options_.max_pending) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server has ", options_.max_pending,
        " requests in hand (--max_pending); retry with backoff"));
  }
  DeviceLoop* best = loops_.front().get();
  for (const auto& loop : loops_) {
    if (loop->load() < best->load()) best = loop.get();
  }
  return best;
}

absl::Status WorkerPool::Submit(std::unique_ptr<TextRequest>& request) {
  absl::StatusOr<DeviceLoop*> loop = Choose();
  if (!loop.ok()) return loop.status();
  (*loop)->Submit(std::move(request));
  return absl::OkStatus();
}

absl::Status WorkerPool::Submit(std::unique_ptr<ImageRequest>& request) {
  absl::StatusOr<DeviceLoop*> loop = Choose();
  if (!loop.ok()) return loop.status();
  (*loop)->Submit(std::move(request));
  return absl::OkStatus();
}

std::vector<std::string> WorkerPool::devices() const {
  std::vector<std::string> out;
  for (const auto& loop : loops_) out.push_back(loop->device());
  return out;
}

int WorkerPool::pending() const {
  int n = 0;
  for (const auto& loop : loops_) n += loop->load();
  return n;
}

void WorkerPool::Stop() {
  stopping_.store(true);
  for (auto& loop : loops_) loop->Stop();
}

}  // namespace tandem

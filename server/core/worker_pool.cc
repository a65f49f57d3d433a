#include "server/core/worker_pool.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tandem {

absl::StatusOr<std::unique_ptr<WorkerPool>> WorkerPool::Create(const WorkerPoolOptions& options,
                                                               ModelRegistry* registry,
                                                               Metrics* metrics) {
  std::unique_ptr<WorkerPool> pool(new WorkerPool());
  pool->options_ = options;
  pool->registry_ = registry;
  pool->metrics_ = metrics;
  const std::vector<std::string>& devices = registry->options().devices;
  std::vector<int64_t> budgets = options.train_budgets;
  if (budgets.size() == 1) budgets.assign(devices.size(), budgets[0]);
  budgets.resize(devices.size(), 0);
  pool->placement_ = std::make_unique<Placement>(budgets);
  for (int i = 0; i < static_cast<int>(devices.size()); ++i) {
    DeviceLoopOptions lo = options.loop;
    lo.device = devices[i];
    lo.device_index = i;
    absl::StatusOr<std::unique_ptr<DeviceLoop>> loop = DeviceLoop::Create(lo, registry, metrics);
    if (!loop.ok()) return loop.status();
    pool->loops_.push_back(*std::move(loop));
  }
  return pool;
}

WorkerPool::~WorkerPool() { Stop(); }

std::shared_ptr<WorkerPool::ModelQueue> WorkerPool::QueueOf(const std::string& model) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<ModelQueue>& q = queues_[model];
  if (!q) q = std::make_shared<ModelQueue>();
  return q;
}

void WorkerPool::CountRejected(const DeviceRequest& request, const char* reason) {
  if (metrics_) {
    metrics_->requests_rejected.Add({{"model", request.model->name}, {"reason", reason}})
        .Increment();
  }
}

absl::Status WorkerPool::AdmitToQueue(DeviceRequest& request) {
  if (stopping_.load()) {
    CountRejected(request, "shutting_down");
    return absl::UnavailableError("the server is shutting down");
  }
  // Reserved atomically, so N + k concurrent submissions against a cap of N refuse exactly k.
  if (in_hand_.fetch_add(1) >= options_.max_pending) {
    in_hand_.fetch_sub(1);
    CountRejected(request, "max_pending");
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server has ", options_.max_pending,
        " requests in hand (--max_pending); retry with backoff"));
  }
  std::shared_ptr<ModelQueue> q = QueueOf(request.model->name);
  const int waiting = q->waiting.fetch_add(1) + 1;
  if (waiting > options_.max_queue_per_model) {
    q->waiting.fetch_sub(1);
    CountRejected(request, "max_queue_per_model");
    in_hand_.fetch_sub(1);
    // Expect a place once about (waiting / concurrency) requests have gone through.
    const RegistryOptions& r = registry_->options();
    const int per_device =
        request.model->dir.kind == ModelKind::kText ? r.max_sequences : r.max_images;
    double mean;
    {
      absl::MutexLock lock(&mu_);
      mean = q->mean_seconds;
    }
    const double seconds = std::clamp(
        mean * waiting / std::max(1, per_device * size()), 0.05, 30.0);
    const int64_t ms = static_cast<int64_t>(std::ceil(seconds * 1000));
    absl::Status s = absl::ResourceExhaustedError(absl::StrFormat(
        "model \"%s\" has %d requests waiting (--max_queue_per_model); retry in about %.1f s",
        request.model->name, options_.max_queue_per_model, seconds));
    s.SetPayload(kRetryAfterMsPayload, absl::Cord(absl::StrCat(ms)));
    return s;
  }
  // The count follows the request: released when a workload admits it, or when it ends.
  // (Constructed in place: a temporary Ticket would give the count back at once.)
  struct Ticket {
    explicit Ticket(std::shared_ptr<ModelQueue> queue) : q(std::move(queue)) {}
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;
    ~Ticket() { q->waiting.fetch_sub(1); }
    std::shared_ptr<ModelQueue> q;
  };
  request.queue_ticket = std::make_shared<Ticket>(std::move(q));
  return absl::OkStatus();
}

template <typename Request>
absl::Status WorkerPool::Place(std::unique_ptr<Request>& request) {
  if (absl::Status s = AdmitToQueue(*request); !s.ok()) return s;
  const int device = placement_->PlaceRequest();
  std::shared_ptr<ModelQueue> q = QueueOf(request->model->name);
  // The request leaves the device exactly once, whatever the reason: placement and the model's
  // mean latency follow it.
  auto user_done = std::move(request->on_done);
  request->on_done = [this, device, q, start = request->accepted,
                      user_done = std::move(user_done)] {
    placement_->RequestEnded(device);
    in_hand_.fetch_sub(1);
    const double took = absl::ToDoubleSeconds(absl::Now() - start);
    {
      absl::MutexLock lock(&mu_);
      q->mean_seconds = q->mean_seconds == 0 ? took : 0.9 * q->mean_seconds + 0.1 * took;
    }
    if (user_done) user_done();
  };
  loops_[device]->Submit(std::move(request));
  return absl::OkStatus();
}

absl::Status WorkerPool::Submit(std::unique_ptr<TextRequest>& request) { return Place(request); }

absl::Status WorkerPool::Submit(std::unique_ptr<ImageRequest>& request) { return Place(request); }

std::vector<std::string> WorkerPool::devices() const {
  std::vector<std::string> out;
  for (const auto& loop : loops_) out.push_back(loop->device());
  return out;
}

void WorkerPool::Stop() {
  stopping_.store(true);
  for (auto& loop : loops_) loop->Stop();
}

}  // namespace tandem

#include "server/core/device_loop.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace tandem {

DeviceLoop::DeviceLoop(DeviceLoopOptions options, ModelRegistry* registry, Metrics* metrics)
    : options_(std::move(options)), registry_(registry), metrics_(metrics) {}

absl::StatusOr<std::unique_ptr<DeviceLoop>> DeviceLoop::Create(DeviceLoopOptions options,
                                                               ModelRegistry* registry,
                                                               Metrics* metrics) {
  std::unique_ptr<DeviceLoop> loop(new DeviceLoop(std::move(options), registry, metrics));
  DeviceLoop* raw = loop.get();
  const std::string& device = raw->options_.device;
  TextWorkloadOptions text_options;
  text_options.device = device;
  text_options.prefill_token_budget = raw->options_.prefill_token_budget;
  const int index = raw->options_.device_index;
  raw->text_ = std::make_unique<TextWorkload>(text_options, index, metrics);
  raw->image_ = std::make_unique<ImageWorkload>(device, index, metrics);
  for (Workload* w : {static_cast<Workload*>(raw->text_.get()),
                      static_cast<Workload*>(raw->image_.get())}) {
    prometheus::Counter* busy =
        metrics ? &metrics->device_busy_seconds.Add({{"device", device}, {"work", w->name()}})
                : nullptr;
    raw->workloads_.emplace_back(w, busy);
  }
  raw->thread_ = std::thread([raw] { raw->Run(); });
  return loop;
}

DeviceLoop::~DeviceLoop() { Stop(); }

template <typename Request, typename Workload>
void DeviceLoop::Enqueue(std::unique_ptr<Request> request, Workload* workload) {
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    request->End(absl::UnavailableError("the server is shutting down"));
    return;
  }
  inbox_.push_back(
      [workload, r = std::move(request)]() mutable { workload->Admit(std::move(r)); });
}

void DeviceLoop::Submit(std::unique_ptr<TextRequest> request) {
  Enqueue(std::move(request), text_.get());
}

void DeviceLoop::Submit(std::unique_ptr<ImageRequest> request) {
  Enqueue(std::move(request), image_.get());
}

void DeviceLoop::Post(absl::AnyInvocable<void()> fn) {
  absl::MutexLock lock(&mu_);
  inbox_.push_back(std::move(fn));
}

bool DeviceLoop::TryPost(absl::AnyInvocable<void()>& fn) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  inbox_.push_back(std::move(fn));
  return true;
}

bool DeviceLoop::HasWork() const {
  for (const auto& [workload, busy] : workloads_) {
    if (workload->HasWork()) return true;
  }
  return false;
}

void DeviceLoop::Run() {
  std::deque<absl::AnyInvocable<void()>> batch;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (!HasWork()) {
        // Nothing to run: sleep until something is posted.
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return !inbox_.empty() || stopping_;
        };
        mu_.Await(absl::Condition(&ready));
      }
      if (stopping_) break;
      batch.swap(inbox_);
    }
    for (auto& fn : batch) fn();
    batch.clear();
    // One iteration of each workload (an LLM decode step, then a denoising step): text streams
    // keep flowing while images denoise, each waiting at most one step of the other.
    for (auto& [workload, busy] : workloads_) {
      if (!workload->HasWork()) continue;
      const absl::Time t0 = absl::Now();
      workload->RunIteration();
      if (busy) busy->Increment(absl::ToDoubleSeconds(absl::Now() - t0));
    }
  }
  // Work posted before the stop still gets its stream finished.
  std::deque<absl::AnyInvocable<void()>> rest;
  {
    absl::MutexLock lock(&mu_);
    rest.swap(inbox_);
  }
  for (auto& fn : rest) fn();
  for (auto& [workload, busy] : workloads_) {
    workload->AbortAll(absl::UnavailableError("the server is shutting down"));
  }
}

void DeviceLoop::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

}  // namespace tandem

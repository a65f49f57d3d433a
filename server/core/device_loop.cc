#include "server/core/device_loop.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "models/image_model.h"
#include "models/llama/llama.h"
#include "models/formats/safetensors.h"

namespace tandem {

DeviceLoop::DeviceLoop(DeviceLoopOptions options, ModelRegistry* registry, Metrics* metrics)
    : options_(std::move(options)), registry_(registry), metrics_(metrics) {}

absl::StatusOr<std::unique_ptr<DeviceLoop>> DeviceLoop::Create(DeviceLoopOptions options,
                                                               ModelRegistry* registry,
                                                               Metrics* metrics) {
  if (options.max_sequences < 1) {
    return absl::InvalidArgumentError("max_sequences must be >= 1");
  }
  std::unique_ptr<DeviceLoop> loop(new DeviceLoop(std::move(options), registry, metrics));
  // Load on the creating thread: the loop thread does not exist yet, and a bad model should stop
  // the server from starting rather than fail the first request.
  if (absl::Status s = loop->LoadAll(); !s.ok()) return s;
  DeviceLoop* raw = loop.get();
  const std::string& device = raw->options_.device;
  TextWorkloadOptions text_options;
  text_options.device = device;
  text_options.prefill_token_budget = raw->options_.prefill_token_budget;
  raw->text_ = std::make_unique<TextWorkload>(
      text_options, [raw](const ModelEntry& e) { return raw->TextInstance(e); }, metrics);
  raw->image_ = std::make_unique<ImageWorkload>(
      device, [raw](const ModelEntry& e) { return raw->ImageInstance(e); }, metrics);
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

absl::Status DeviceLoop::LoadAll() {
  for (const auto& entry : registry_->List()) {
    absl::Status s = entry->dir.kind == ModelKind::kText ? TextInstance(*entry).status()
                                                         : ImageInstance(*entry).status();
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

DeviceLoop::~DeviceLoop() { Stop(); }

template <typename Request>
void DeviceLoop::Track(Request& request) {
  load_.fetch_add(1, std::memory_order_relaxed);
  // The request leaves the device exactly once, whatever the reason; the count follows it.
  auto user_done = std::move(request.on_done);
  request.on_done = [this, user_done = std::move(user_done)] {
    load_.fetch_sub(1, std::memory_order_relaxed);
    if (user_done) user_done();
  };
}

template <typename Request, typename Workload>
void DeviceLoop::Enqueue(std::unique_ptr<Request> request, Workload* workload) {
  Track(*request);
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

namespace {

// The device's current instance of `entry` from `instances`, built by `create` from the weights
// file when the device holds none or an older version. Sequences and samples running on a
// previous instance keep it alive (shared_ptr) until they finish: that is the hot swap.
template <typename Model, typename Map, typename Create>
absl::StatusOr<std::shared_ptr<Model>> CurrentInstance(Map& instances, const ModelEntry& entry,
                                                       const std::string& device,
                                                       Create&& create) {
  auto it = instances.find(entry.name);
  if (it != instances.end() && it->second.first >= entry.version) return it->second.second;
  absl::StatusOr<SafetensorsFile> weights = ReadSafetensors(entry.dir.weights_path());
  if (!weights.ok()) return weights.status();
  absl::StatusOr<std::unique_ptr<Model>> model = create(weights->tensors);
  if (!model.ok()) {
    return absl::Status(model.status().code(),
                        absl::StrCat("model \"", entry.name, "\" on ", device, ": ",
                                     model.status().message()));
  }
  auto& slot = instances[entry.name];
  slot = {entry.version, std::shared_ptr<Model>(std::move(*model))};
  return slot.second;
}

}  // namespace

absl::StatusOr<std::shared_ptr<TextModel>> DeviceLoop::TextInstance(const ModelEntry& entry) {
  const TextModelOptions mo{options_.device, options_.max_sequences};
  return CurrentInstance<TextModel>(text_instances_, entry, options_.device,
                                    [&](const TensorMap& w) {
                                      return CreateLlamaModel(entry.dir.llama, w, mo);
                                    });
}

absl::StatusOr<std::shared_ptr<ImageModel>> DeviceLoop::ImageInstance(const ModelEntry& entry) {
  const ImageModelOptions mo{options_.device, options_.max_images};
  return CurrentInstance<ImageModel>(image_instances_, entry, options_.device,
                                     [&](const TensorMap& w) {
                                       return CreateDiffusionModel(entry.dir.diffusion, w, mo);
                                     });
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

#include "server/jobs/eval_sampler.h"

#include <utility>
#include <variant>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "models/formats/png.h"

namespace tandem {
namespace {

// The stream of one sample request: keeps the text and the images, signals the end.
class CollectingStream final : public ResponseStream {
 public:
  void Send(GenerateEvent event) override {
    absl::MutexLock lock(&mu_);
    if (auto* t = std::get_if<TextDelta>(&event)) text_ += t->text;
    if (auto* i = std::get_if<ImageOutput>(&event)) png_ = std::move(i->png);
  }
  void Finish(const absl::Status& status) override {
    {
      absl::MutexLock lock(&mu_);
      if (done_.HasBeenNotified()) return;
      status_ = status;
    }
    done_.Notify();
  }
  bool cancelled() const override { return false; }

  absl::Status Wait() {
    done_.WaitForNotification();
    absl::MutexLock lock(&mu_);
    return status_;
  }
  std::string text() {
    absl::MutexLock lock(&mu_);
    return text_;
  }
  std::string png() {
    absl::MutexLock lock(&mu_);
    return png_;
  }

 private:
  absl::Mutex mu_;
  std::string text_ ABSL_GUARDED_BY(mu_);
  std::string png_ ABSL_GUARDED_BY(mu_);
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  absl::Notification done_;
};

template <typename Request>
std::shared_ptr<CollectingStream> Submit(std::unique_ptr<Request> r,
                                         std::shared_ptr<const ModelEntry> entry,
                                         DeviceLoop* loop) {
  auto stream = std::make_shared<CollectingStream>();
  r->id = "eval-sample";
  r->model = std::move(entry);
  r->priority = kSamplePriority;
  r->accepted = absl::Now();
  r->stream = stream;
  loop->Submit(std::move(r));
  return stream;
}

absl::StatusOr<std::string> SampleText(const EvalSamples& samples,
                                       std::shared_ptr<const ModelEntry> entry, DeviceLoop* loop) {
  auto r = std::make_unique<TextRequest>();
  r->prompt = samples.prompt;
  r->sampling = samples.sampling;
  r->max_tokens = samples.max_tokens;
  std::shared_ptr<CollectingStream> stream = Submit(std::move(r), std::move(entry), loop);
  if (absl::Status s = stream->Wait(); !s.ok()) return s;
  return stream->text();
}

absl::StatusOr<std::string> SampleImages(const EvalSamples& samples,
                                         std::shared_ptr<const ModelEntry> entry,
                                         DeviceLoop* loop) {
  // One request per image, all in flight at once: the loop batches them step by step.
  std::vector<std::shared_ptr<CollectingStream>> streams;
  for (const ImageSampleSpec& spec : samples.images) {
    auto r = std::make_unique<ImageRequest>();
    r->spec = spec;
    r->num_images = 1;
    streams.push_back(Submit(std::move(r), entry, loop));
  }
  std::vector<std::vector<uint8_t>> pixels;
  for (auto& stream : streams) {
    if (absl::Status s = stream->Wait(); !s.ok()) return s;
    absl::StatusOr<RawImage> img = DecodePng(stream->png());
    if (!img.ok()) return img.status();
    pixels.push_back(std::move(img->pixels));
  }
  return TileSamples(entry->dir.diffusion, pixels, samples.columns);
}

}  // namespace

absl::StatusOr<EvalSampleResult> SampleOnLoop(const std::string& model_dir,
                                              const EvalSamples& samples, DeviceLoop* loop,
                                              const RegistryOptions& registry_options) {
  absl::StatusOr<std::shared_ptr<ModelEntry>> entry = LoadModelEntry(
      "evaluation", model_dir, registry_options, {loop->device_index()});
  if (!entry.ok()) return entry.status();
  EvalSampleResult out;
  if ((*entry)->dir.kind == ModelKind::kText) {
    absl::StatusOr<std::string> text = SampleText(samples, *entry, loop);
    if (!text.ok()) return text.status();
    out.text = *std::move(text);
  } else {
    absl::StatusOr<std::string> png = SampleImages(samples, *entry, loop);
    if (!png.ok()) return png.status();
    out.png = *std::move(png);
  }
  return out;
}

}  // namespace tandem

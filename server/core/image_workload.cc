#include "server/core/image_workload.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "models/formats/png.h"

namespace tandem {

struct ImageWorkload::Job {
  std::unique_ptr<ImageRequest> req;
  std::shared_ptr<ImageModel> model;
  std::vector<int> samples;  // one per image
  int total_steps = 0;
  absl::Time started, first_step;
  bool done = false;
};

namespace {

// The image of `sample` at the model's resolution, or at most `side` pixels a side.
absl::StatusOr<std::string> SamplePng(ImageModel& model, int sample, int side) {
  const DiffusionConfig& cfg = model.config();
  RawImage img;
  img.width = cfg.image_size;
  img.height = cfg.image_size;
  img.channels = cfg.channels;
  if (absl::Status s = model.Pixels(sample, &img.pixels); !s.ok()) return s;
  if (side < cfg.image_size) return EncodePng(ResizeNearest(img, side, side));
  return EncodePng(img);
}

}  // namespace

ImageWorkload::ImageWorkload(std::string device, int device_index, Metrics* metrics)
    : device_(std::move(device)), device_index_(device_index), metrics_(metrics) {
  if (metrics_) {
    step_seconds_ = &metrics_->denoise_step_seconds.Add({{"device", device_}},
                                                        Metrics::LatencyBuckets());
    batch_size_ = &metrics_->denoise_batch_size.Add({{"device", device_}},
                                                    Metrics::BatchBuckets());
    const std::map<std::string, std::string> labels = {{"device", device_}};
    waiting_gauges_ = GaugeSet(&metrics_->requests_waiting, "model", labels);
    running_gauges_ = GaugeSet(&metrics_->requests_running, "model", labels);
    slots_gauges_ = GaugeSet(&metrics_->image_slots_used, "model", labels);
  }
}

ImageWorkload::~ImageWorkload() {
  AbortAll(absl::UnavailableError("the server is shutting down"));
}

void ImageWorkload::Admit(std::unique_ptr<ImageRequest> request) {
  waiting_.Push(std::move(request));
  UpdateGauges();
}

void ImageWorkload::RunIteration() {
  DropCancelled();
  StartWaiting();
  StepActive();
  UpdateGauges();
}

void ImageWorkload::AbortAll(const absl::Status& status) {
  waiting_.AbortAll(status);
  for (auto& job : active_.items()) Release(*job, status);
  active_.Sweep();
  UpdateGauges();
}

void ImageWorkload::UpdateGauges() {
  if (!metrics_) return;
  waiting_gauges_.Set(waiting_.CountByModel());
  running_gauges_.Set(active_.CountByModel([](const Job&) { return 1; }));
  slots_gauges_.Set(
      active_.CountByModel([](const Job& j) { return static_cast<int>(j.samples.size()); }));
}

void ImageWorkload::DropCancelled() {
  waiting_.DropCancelled();
  for (auto& job : active_.items()) {
    if (job->req->stream->cancelled()) {
      Release(*job, absl::CancelledError("the request was cancelled"));
    }
  }
  active_.Sweep();
}

void ImageWorkload::StartWaiting() {
  while (!waiting_.empty() && StartHead()) {
  }
}

bool ImageWorkload::StartHead() {
  if (waiting_.DropCancelledFront()) return true;
  ImageRequest& head = waiting_.front();
  absl::StatusOr<std::shared_ptr<ImageModel>> model = InstanceOn<ImageModel>(*head.model, device_index_);
  if (!model.ok()) {
    waiting_.FailFront(model.status());
    return true;
  }
  // A request's images start together, so they share every step; the head waits for room.
  if ((*model)->free_samples() < head.num_images) return false;
  auto owned = std::make_unique<Job>();
  owned->req = waiting_.Pop();
  owned->model = *std::move(model);
  owned->started = absl::Now();
  Job& job = *owned;
  absl::Status status;
  for (int i = 0; i < job.req->num_images && status.ok(); ++i) {
    ImageSampleSpec spec = job.req->spec;
    spec.seed = job.req->spec.seed + static_cast<uint64_t>(i);
    absl::StatusOr<int> sample = job.model->StartSample(spec);
    if (sample.ok()) {
      job.samples.push_back(*sample);
    } else {
      status = sample.status();
    }
  }
  if (!status.ok()) {
    Release(job, status);
    return true;
  }
  job.total_steps = job.model->TotalSteps(job.samples.front());
  if (metrics_) {
    metrics_->queue_seconds.Add({{"model", job.req->model->name}}, Metrics::LatencyBuckets())
        .Observe(absl::ToDoubleSeconds(job.started - job.req->accepted));
  }
  active_.Add(std::move(owned));
  return true;
}

void ImageWorkload::StepActive() {
  for (auto& [model, jobs] : active_.ByInstance<ImageModel>()) {
    std::vector<int> samples;
    for (Job* j : jobs) samples.insert(samples.end(), j->samples.begin(), j->samples.end());
    const absl::Time t0 = absl::Now();
    absl::Status status = model->Step(samples);
    if (step_seconds_) {
      step_seconds_->Observe(absl::ToDoubleSeconds(absl::Now() - t0));
      batch_size_->Observe(static_cast<double>(samples.size()));
    }
    for (Job* job : jobs) {
      if (status.ok()) {
        Progress(*job);
      } else {
        Release(*job, status);
      }
    }
  }
  active_.Sweep();
}

void ImageWorkload::Progress(Job& job) {
  const int step = job.model->StepsDone(job.samples.front());
  if (step == 1) {
    job.first_step = absl::Now();
    if (metrics_) {
      metrics_->ttft_seconds.Add({{"model", job.req->model->name}}, Metrics::LatencyBuckets())
          .Observe(absl::ToDoubleSeconds(job.first_step - job.req->accepted));
    }
  }
  ImageProgress p;
  p.step = step;
  p.total = job.total_steps;
  const int every = job.req->preview_every;
  if (every > 0 && step % every == 0 && step < job.total_steps) {
    // Previews stay small on the wire: at most 64 pixels a side.
    absl::StatusOr<std::string> png = SamplePng(*job.model, job.samples.front(), 64);
    if (png.ok()) p.preview_png = *std::move(png);
  }
  job.req->stream->Send(std::move(p));
  if (step >= job.total_steps) Complete(job);
}

void ImageWorkload::Complete(Job& job) {
  const DiffusionConfig& cfg = job.model->config();
  for (size_t i = 0; i < job.samples.size(); ++i) {
    absl::StatusOr<std::string> png = SamplePng(*job.model, job.samples[i], cfg.image_size);
    if (!png.ok()) {
      Release(job, png.status());
      return;
    }
    ImageOutput out;
    out.png = *std::move(png);
    out.width = out.height = cfg.image_size;
    out.seed = job.req->spec.seed + i;
    out.index = static_cast<int>(i);
    job.req->stream->Send(std::move(out));
  }
  const absl::Time end = absl::Now();
  Finished f;
  f.reason = FinishReason::kComplete;
  f.request_id = job.req->id;
  f.seed = job.req->spec.seed;
  f.model = job.req->model->name;
  f.model_version = job.req->model->version;
  f.usage.prompt_tokens = job.req->prompt_tokens;
  f.usage.images = static_cast<int>(job.samples.size());
  f.usage.steps = job.total_steps;
  f.usage.queue_seconds = absl::ToDoubleSeconds(job.started - job.req->accepted);
  f.usage.time_to_first_token_seconds = absl::ToDoubleSeconds(job.first_step - job.req->accepted);
  f.usage.total_seconds = absl::ToDoubleSeconds(end - job.req->accepted);
  job.req->stream->Send(std::move(f));
  if (metrics_) {
    const std::map<std::string, std::string> labels = {{"model", job.req->model->name}};
    metrics_->request_seconds.Add(labels, Metrics::LatencyBuckets())
        .Observe(absl::ToDoubleSeconds(end - job.req->accepted));
    metrics_->generated_images.Add(labels).Increment(static_cast<double>(job.samples.size()));
  }
  Release(job, absl::OkStatus());
}

void ImageWorkload::Release(Job& job, const absl::Status& status) {
  if (job.done) return;
  for (int s : job.samples) job.model->ReleaseSample(s);
  job.samples.clear();
  job.done = true;
  job.req->End(status);
}

}  // namespace tandem

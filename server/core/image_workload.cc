#include "server/core/image_workload.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "models/formats/png.h"

namespace tandem {

using tandem::v1::Finished;
using tandem::v1::GenerateResponse;

struct ImageWorkload::Job {
  std::unique_ptr<ImageRequest> req;
  std::shared_ptr<ImageModel> model;
  std::vector<int> samples;  // one per image
  int total_steps = 0;
  absl::Time started, first_step;
  bool done = false;
};

ImageWorkload::ImageWorkload(std::string device, ImageInstanceFn instances, Metrics* metrics)
    : device_(std::move(device)), instances_(std::move(instances)), metrics_(metrics) {
  if (metrics_) {
    step_seconds_ = &metrics_->denoise_step_seconds.Add({{"device", device_}},
                                                        Metrics::LatencyBuckets());
    batch_size_ = &metrics_->denoise_batch_size.Add({{"device", device_}},
                                                    Metrics::BatchBuckets());
  }
}

ImageWorkload::~ImageWorkload() {
  AbortAll(absl::UnavailableError("the server is shutting down"));
}

void ImageWorkload::Admit(std::unique_ptr<ImageRequest> request) {
  auto it = std::find_if(waiting_.begin(), waiting_.end(), [&](const auto& w) {
    return w->priority < request->priority;
  });
  waiting_.insert(it, std::move(request));
}

void ImageWorkload::RunIteration() {
  DropCancelled();
  StartWaiting();
  StepActive();
}

void ImageWorkload::AbortAll(const absl::Status& status) {
  while (!waiting_.empty()) {
    auto req = std::move(waiting_.front());
    waiting_.pop_front();
    req->stream->Finish(status);
    if (req->on_done) req->on_done();
  }
  for (auto& job : active_) Fail(*job, status);
  active_.clear();
}

void ImageWorkload::DropCancelled() {
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if ((*it)->stream->cancelled()) {
      (*it)->stream->Finish(absl::CancelledError("cancelled before it started"));
      if ((*it)->on_done) (*it)->on_done();
      it = waiting_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& job : active_) {
    if (job->req->stream->cancelled()) Fail(*job, absl::CancelledError("the request was cancelled"));
  }
  active_.erase(std::remove_if(active_.begin(), active_.end(),
                               [](const auto& j) { return j->done; }),
                active_.end());
}

void ImageWorkload::StartWaiting() {
  while (!waiting_.empty()) {
    ImageRequest& head = *waiting_.front();
    absl::StatusOr<std::shared_ptr<ImageModel>> model = instances_(*head.model);
    if (!model.ok()) {
      auto req = std::move(waiting_.front());
      waiting_.pop_front();
      req->stream->Finish(model.status());
      if (req->on_done) req->on_done();
      continue;
    }
    // A request's images start together, so they share every step; the head waits for room.
    if ((*model)->free_samples() < head.num_images) break;
    auto job = std::make_unique<Job>();
    job->req = std::move(waiting_.front());
    waiting_.pop_front();
    job->model = *std::move(model);
    job->started = absl::Now();
    absl::Status status;
    for (int i = 0; i < job->req->num_images && status.ok(); ++i) {
      ImageSampleSpec spec = job->req->spec;
      spec.seed = job->req->spec.seed + static_cast<uint64_t>(i);
      absl::StatusOr<int> sample = job->model->StartSample(spec);
      if (!sample.ok()) {
        status = sample.status();
      } else {
        job->samples.push_back(*sample);
      }
    }
    if (!status.ok()) {
      Fail(*job, status);
      continue;
    }
    job->total_steps = job->model->TotalSteps(job->samples.front());
    if (metrics_) {
      metrics_->queue_seconds.Add({{"model", job->req->model->name}}, Metrics::LatencyBuckets())
          .Observe(absl::ToDoubleSeconds(job->started - job->req->accepted));
    }
    active_.push_back(std::move(job));
  }
}

void ImageWorkload::StepActive() {
  std::map<ImageModel*, std::vector<Job*>> groups;
  for (auto& job : active_) groups[job->model.get()].push_back(job.get());
  for (auto& [model, jobs] : groups) {
    std::vector<int> samples;
    for (Job* j : jobs) samples.insert(samples.end(), j->samples.begin(), j->samples.end());
    absl::Time t0 = absl::Now();
    absl::Status status = model->Step(samples);
    if (step_seconds_) {
      step_seconds_->Observe(absl::ToDoubleSeconds(absl::Now() - t0));
      batch_size_->Observe(static_cast<double>(samples.size()));
    }
    for (Job* job : jobs) {
      if (!status.ok()) {
        Fail(*job, status);
        continue;
      }
      Progress(*job);
    }
  }
  active_.erase(std::remove_if(active_.begin(), active_.end(),
                               [](const auto& j) { return j->done; }),
                active_.end());
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
  GenerateResponse r;
  auto* p = r.mutable_progress();
  p->set_step(step);
  p->set_total(job.total_steps);
  const int every = job.req->preview_every;
  if (every > 0 && step % every == 0 && step < job.total_steps) {
    const DiffusionConfig& cfg = job.model->config();
    RawImage img;
    img.width = cfg.image_size;
    img.height = cfg.image_size;
    img.channels = cfg.channels;
    if (job.model->Pixels(job.samples.front(), &img.pixels).ok()) {
      // Previews stay small on the wire: at most 64 pixels a side.
      const int side = std::min(64, cfg.image_size);
      absl::StatusOr<std::string> png = EncodePng(ResizeNearest(img, side, side));
      if (png.ok()) p->set_preview_png(*std::move(png));
    }
  }
  job.req->stream->Send(std::move(r));
  if (step >= job.total_steps) Complete(job);
}

void ImageWorkload::Complete(Job& job) {
  const DiffusionConfig& cfg = job.model->config();
  for (size_t i = 0; i < job.samples.size(); ++i) {
    RawImage img;
    img.width = cfg.image_size;
    img.height = cfg.image_size;
    img.channels = cfg.channels;
    absl::Status s = job.model->Pixels(job.samples[i], &img.pixels);
    absl::StatusOr<std::string> png =
        s.ok() ? EncodePng(img) : absl::StatusOr<std::string>(s);
    if (!png.ok()) {
      Fail(job, png.status());
      return;
    }
    GenerateResponse r;
    auto* out = r.mutable_image();
    out->set_png(*std::move(png));
    out->set_width(img.width);
    out->set_height(img.height);
    out->set_seed(job.req->spec.seed + i);
    out->set_index(static_cast<int>(i));
    job.req->stream->Send(std::move(r));
  }
  const absl::Time end = absl::Now();
  GenerateResponse r;
  Finished* f = r.mutable_finished();
  f->set_reason(Finished::COMPLETE);
  f->set_seed(job.req->spec.seed);
  f->set_model(job.req->model->name);
  f->set_model_version(job.req->model->version);
  auto* u = f->mutable_usage();
  u->set_prompt_tokens(job.req->prompt_tokens);
  u->set_images(static_cast<int>(job.samples.size()));
  u->set_steps(job.total_steps);
  u->set_queue_seconds(absl::ToDoubleSeconds(job.started - job.req->accepted));
  u->set_time_to_first_token_seconds(absl::ToDoubleSeconds(job.first_step - job.req->accepted));
  u->set_total_seconds(absl::ToDoubleSeconds(end - job.req->accepted));
  job.req->stream->Send(std::move(r));
  job.req->stream->Finish(absl::OkStatus());
  if (metrics_) {
    const std::map<std::string, std::string> labels = {{"model", job.req->model->name}};
    metrics_->request_seconds.Add(labels, Metrics::LatencyBuckets())
        .Observe(absl::ToDoubleSeconds(end - job.req->accepted));
    metrics_->generated_images.Add(labels).Increment(static_cast<double>(job.samples.size()));
  }
  Release(job);
}

void ImageWorkload::Fail(Job& job, const absl::Status& status) {
  if (job.done) return;
  job.req->stream->Finish(status);
  Release(job);
}

void ImageWorkload::Release(Job& job) {
  for (int s : job.samples) job.model->ReleaseSample(s);
  job.samples.clear();
  job.done = true;
  if (job.req->on_done) {
    auto fn = std::move(job.req->on_done);
    job.req->on_done = nullptr;
    fn();
  }
}

}  // namespace tandem

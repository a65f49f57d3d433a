#include "server/jobs/job_metrics.h"

#include <cstdio>
#include <map>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "models/torch/matmul_peak.h"

namespace tandem {
namespace {

// Sizes and timing of the one-off measurement: large enough to reach the BLAS's rate, short
// enough to go unnoticed at a job's start.
constexpr double kPeakSecondsPerSize = 0.05;

std::vector<int> PeakSizes(const std::string& device) {
  if (device.rfind("cuda", 0) == 0) return {2048, 4096};
  return {256, 512};
}

template <typename T>
void RemoveFrom(prometheus::Family<T>& family, T* series) {
  if (series) family.Remove(series);
}

}  // namespace

double DevicePeakFlops(const std::string& device, double configured, Metrics* metrics) {
  static absl::Mutex mu(absl::kConstInit);
  static auto* measured = new std::map<std::string, double>();
  double peak = configured;
  if (peak <= 0) {
    absl::MutexLock lock(&mu);
    auto it = measured->find(device);
    if (it == measured->end()) {
      const MatmulPeak m = MeasureMatmulPeak(device, kPeakSecondsPerSize, PeakSizes(device));
      std::fprintf(stderr,
                   "tandemd: %s: float32 matmul peak %.1f GFLOP/s (%dx%d, %d threads), the MFU "
                   "denominator (--peak_flops overrides)\n",
                   device.c_str(), m.gflops, m.size, m.size, m.threads);
      it = measured->emplace(device, m.gflops * 1e9).first;
    }
    peak = it->second;
  }
  if (metrics) metrics->device_peak_flops.Add({{"device", device}}).Set(peak);
  return peak;
}

JobMetrics::JobMetrics(Metrics* metrics, const TrainOptions& train, double peak_flops)
    : metrics_(metrics),
      job_(train.job_id),
      text_(train.kind == ModelKind::kText),
      peak_flops_(peak_flops) {
  if (!metrics_) return;
  if (text_ && train.llama.seq_len > 0) {
    double forward = 0;
    for (int pos = 0; pos < train.llama.seq_len; ++pos) forward += train.llama.FlopsPerToken(pos);
    flops_per_item_ = 3.0 * forward / train.llama.seq_len;  // forward + backward (2x)
  }
  const prometheus::Labels job = {{"job_id", job_}};
  steps_ = &metrics_->train_steps.Add({{"job_id", job_}, {"kind", text_ ? "text" : "image"}});
  items_ = &metrics_->train_items.Add({{"job_id", job_}, {"unit", text_ ? "tokens" : "images"}});
  step_ = &metrics_->train_step.Add(job);
  target_ = &metrics_->train_target_steps.Add(job);
  loss_ = &metrics_->train_loss.Add(job);
  lr_ = &metrics_->train_learning_rate.Add(job);
  progress_ = &metrics_->train_progress_time.Add(job);
}

JobMetrics::~JobMetrics() {
  if (!metrics_) return;
  RemoveFrom(metrics_->train_steps, steps_);
  RemoveFrom(metrics_->train_items, items_);
  RemoveFrom(metrics_->train_step, step_);
  RemoveFrom(metrics_->train_target_steps, target_);
  RemoveFrom(metrics_->train_loss, loss_);
  RemoveFrom(metrics_->train_learning_rate, lr_);
  RemoveFrom(metrics_->train_progress_time, progress_);
  RemoveFrom(metrics_->train_mfu, mfu_);
  RemoveFrom(metrics_->train_eval_loss, eval_loss_);
  RemoveFrom(metrics_->train_bits_per_byte, bits_per_byte_);
  RemoveFrom(metrics_->train_checkpoint_seconds, checkpoint_seconds_);
  RemoveFrom(metrics_->train_checkpoint_bytes, checkpoint_bytes_);
}

void JobMetrics::Progress() { progress_->Set(absl::ToUnixMicros(absl::Now()) / 1e6); }

void JobMetrics::Started(int64_t step, int64_t total_steps) {
  if (!metrics_) return;
  step_->Set(static_cast<double>(step));
  target_->Set(static_cast<double>(total_steps));
  Progress();
}

void JobMetrics::Step(const StepMetrics& m, double seconds) {
  if (!metrics_) return;
  steps_->Increment();
  items_->Increment(static_cast<double>(m.tokens + m.images));
  step_->Set(static_cast<double>(m.step));
  loss_->Set(m.loss);
  lr_->Set(m.lr);
  if (text_ && peak_flops_ > 0 && flops_per_item_ > 0 && seconds > 0) {
    if (!mfu_) mfu_ = &metrics_->train_mfu.Add({{"job_id", job_}});
    mfu_->Set(static_cast<double>(m.tokens) * flops_per_item_ / seconds / peak_flops_);
  }
  Progress();
}

void JobMetrics::Evaluated(const EvalMetrics& m) {
  if (!metrics_) return;
  if (!eval_loss_) eval_loss_ = &metrics_->train_eval_loss.Add({{"job_id", job_}});
  eval_loss_->Set(m.loss);
  if (text_) {
    if (!bits_per_byte_) {
      bits_per_byte_ = &metrics_->train_bits_per_byte.Add({{"job_id", job_}});
    }
    bits_per_byte_->Set(m.bits_per_byte);
  }
  Progress();
}

void JobMetrics::Checkpointed(double seconds, int64_t bytes) {
  if (!metrics_) return;
  if (!checkpoint_seconds_) {
    checkpoint_seconds_ = &metrics_->train_checkpoint_seconds.Add({{"job_id", job_}});
    checkpoint_bytes_ = &metrics_->train_checkpoint_bytes.Add({{"job_id", job_}});
  }
  checkpoint_seconds_->Set(seconds);
  checkpoint_bytes_->Set(static_cast<double>(bytes));
  Progress();
}

}  // namespace tandem

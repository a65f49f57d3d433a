// JobMetrics: the Prometheus series of one run of one training job (label job_id=<id>): steps done
// and planned, loss, learning rate, evaluation results, items trained on, the model FLOP
// utilization (text jobs), the latest checkpoint's write time and size, and the time of the
// latest progress. They exist while the run does: the destructor removes them, so finished jobs
// leave no series behind (their history is Prometheus'; the job store keeps every step).
//
// MFU: a text job's training FLOPs are 3 x the forward's (LlamaConfig::FlopsPerToken, averaged
// over the positions of a seq_len window) per token; the peak is DevicePeakFlops. Image jobs
// have no MFU series (no FLOP count of the U-Net yet).
//
// Used from the job's thread; DevicePeakFlops from any thread.
#ifndef TANDEM_SERVER_JOBS_JOB_METRICS_H_
#define TANDEM_SERVER_JOBS_JOB_METRICS_H_

#include <cstdint>
#include <string>

#include "server/metrics/metrics.h"
#include "trainer/train_options.h"
#include "trainer/trainer.h"

namespace tandem {

// The FLOP/s that `device`'s MFU is measured against: `configured` when > 0, else the device's
// float32 matmul rate, measured once per process (~0.2 s, on the calling thread). Sets
// tandem_device_peak_flops{device} when metrics is given.
double DevicePeakFlops(const std::string& device, double configured, Metrics* metrics);

class JobMetrics {
 public:
  // metrics may be null (every call is then a no-op). peak_flops <= 0: no MFU series.
  JobMetrics(Metrics* metrics, const TrainOptions& train, double peak_flops);
  ~JobMetrics();
  JobMetrics(const JobMetrics&) = delete;
  JobMetrics& operator=(const JobMetrics&) = delete;

  // The run starts at `step` of `total_steps`.
  void Started(int64_t step, int64_t total_steps);
  // A step done; `seconds` is its wall time.
  void Step(const StepMetrics& m, double seconds);
  void Evaluated(const EvalMetrics& m);
  // A checkpoint written: how long it took, and its size on disk.
  void Checkpointed(double seconds, int64_t bytes);

 private:
  void Progress();

  Metrics* const metrics_;
  const std::string job_;
  const bool text_;
  const double peak_flops_;
  double flops_per_item_ = 0;  // training FLOPs per token (text)
  prometheus::Counter* steps_ = nullptr;
  prometheus::Counter* items_ = nullptr;
  prometheus::Gauge* step_ = nullptr;
  prometheus::Gauge* target_ = nullptr;
  prometheus::Gauge* loss_ = nullptr;
  prometheus::Gauge* lr_ = nullptr;
  prometheus::Gauge* progress_ = nullptr;
  prometheus::Gauge* mfu_ = nullptr;            // created at the first step
  prometheus::Gauge* eval_loss_ = nullptr;      // ... at the first evaluation
  prometheus::Gauge* bits_per_byte_ = nullptr;
  prometheus::Gauge* checkpoint_seconds_ = nullptr;  // ... at the first checkpoint
  prometheus::Gauge* checkpoint_bytes_ = nullptr;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_JOBS_JOB_METRICS_H_

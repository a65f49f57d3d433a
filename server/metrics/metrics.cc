#include "server/metrics/metrics.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "prometheus/text_serializer.h"
#include "server/metrics/process_metrics.h"

namespace tandem {
namespace {

prometheus::Family<prometheus::Counter>& CounterFamily(prometheus::Registry& r,
                                                       const std::string& name,
                                                       const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r);
}
prometheus::Family<prometheus::Histogram>& HistogramFamily(prometheus::Registry& r,
                                                           const std::string& name,
                                                           const std::string& help) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r);
}
prometheus::Family<prometheus::Gauge>& GaugeFamily(prometheus::Registry& r,
                                                   const std::string& name,
                                                   const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r);
}

}  // namespace

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests(CounterFamily(*registry_,
                             "tandem_generate_requests_total",
                             "Generate calls by model, kind and final gRPC status code.")),
      prompt_tokens(CounterFamily(*registry_, "tandem_prompt_tokens_total",
                                  "Prompt tokens prefilled, by model.")),
      generated_tokens(CounterFamily(*registry_, "tandem_generated_tokens_total",
                                     "Tokens generated, by model.")),
      queue_seconds(HistogramFamily(*registry_, "tandem_queue_seconds",
                                    "Time from accepting a request to the device starting it.")),
      ttft_seconds(HistogramFamily(*registry_, "tandem_time_to_first_token_seconds",
                                   "Time from accepting a request to its first token or step.")),
      request_seconds(HistogramFamily(*registry_, "tandem_request_seconds",
                                      "Time from accepting a request to its end.")),
      inter_token_seconds(HistogramFamily(*registry_, "tandem_inter_token_seconds",
                                          "Time between consecutive tokens of one stream.")),
      decode_step_seconds(HistogramFamily(*registry_, "tandem_decode_step_seconds",
                                          "Wall time of one batched decode step, by device.")),
      decode_batch_size(HistogramFamily(*registry_, "tandem_decode_batch_size",
                                        "Sequences in one batched decode step, by device.")),
      prefill_seconds(HistogramFamily(*registry_, "tandem_prefill_seconds",
                                      "Wall time of one prompt prefill, by device.")),
      denoise_step_seconds(HistogramFamily(*registry_, "tandem_denoise_step_seconds",
                                           "Wall time of one batched denoising step, by device.")),
      denoise_batch_size(HistogramFamily(*registry_, "tandem_denoise_batch_size",
                                         "Images in one batched denoising step, by device.")),
      generated_images(CounterFamily(*registry_, "tandem_generated_images_total",
                                     "Images generated, by model.")),
      requests_waiting(GaugeFamily(*registry_, "tandem_requests_waiting",
                                   "Requests accepted by a device but not started yet, by model "
                                   "and device.")),
      requests_running(GaugeFamily(*registry_, "tandem_requests_running",
                                   "Requests running on a device (prefilling, decoding or "
                                   "denoising), by model and device.")),
      kv_slots_used(GaugeFamily(*registry_, "tandem_kv_cache_slots_used",
                                "KV-cache slots held by running sequences, by model and "
                                "device.")),
      kv_slots_capacity(GaugeFamily(*registry_, "tandem_kv_cache_slots_capacity",
                                    "KV-cache slots of a text model's instance (--max_sequences), "
                                    "by model and device.")),
      image_slots_used(GaugeFamily(*registry_, "tandem_image_slots_used",
                                   "Image samples being denoised, by model and device.")),
      image_slots_capacity(GaugeFamily(*registry_, "tandem_image_slots_capacity",
                                       "Image samples an image model's instance denoises at once "
                                       "(--max_images), by model and device.")),
      requests_rejected(CounterFamily(*registry_, "tandem_requests_rejected_total",
                                      "Generate calls refused before reaching a device, by model "
                                      "and reason.")),
      device_busy_seconds(CounterFamily(*registry_, "tandem_device_busy_seconds_total",
                                        "Seconds of device time, by device and work: text and "
                                        "image (inference iterations), train and eval (training "
                                        "units, which may overlap inference: they run at "
                                        "background priority), idle (nothing to do).")),
      model_info(GaugeFamily(*registry_, "tandem_model_parameters",
                             "Servable models (value: parameter count), by model, kind and "
                             "the version served.")),
      model_load_seconds(HistogramFamily(*registry_, "tandem_model_load_seconds",
                                         "Time to read a model version and build its instance on "
                                         "every device, by model and reason (load, swap).")),
      build_info(GaugeFamily(*registry_, "tandem_build_info",
                             "Always 1; the labels say what tandemd was built from: version, "
                             "torch (LibTorch), cuda (CUDA runtime, or none).")),
      train_jobs(GaugeFamily(*registry_, "tandem_train_jobs",
                             "Training jobs by state (queued, running, paused, succeeded, "
                             "failed, cancelled).")),
      train_steps(CounterFamily(*registry_, "tandem_train_steps_total",
                                "Optimizer steps completed, by job and kind.")),
      train_items(CounterFamily(*registry_, "tandem_train_items_total",
                                "Tokens (text) or images (image) trained on, by job and unit.")),
      train_loss(GaugeFamily(*registry_, "tandem_train_loss",
                             "Training loss of the latest step, by job.")),
      train_learning_rate(GaugeFamily(*registry_, "tandem_train_learning_rate",
                                      "Learning rate of the latest step, by job.")),
      train_eval_loss(GaugeFamily(*registry_, "tandem_train_eval_loss",
                                  "Held-out loss of the latest evaluation, by job.")),
      train_bits_per_byte(GaugeFamily(*registry_, "tandem_train_eval_bpb",
                                      "Held-out bits per byte of the latest evaluation (text "
                                      "jobs), by job.")),
      train_step(GaugeFamily(*registry_, "tandem_train_step",
                             "Optimizer steps a running job has done, by job.")),
      train_target_steps(GaugeFamily(*registry_, "tandem_train_target_steps",
                                     "Optimizer steps a running job will do in all, by job.")),
      train_mfu(GaugeFamily(*registry_, "tandem_train_mfu_ratio",
                            "Model FLOP utilization of a running text job's latest step: "
                            "training FLOPs (3 x the forward's) per second over the device's "
                            "peak (tandem_device_peak_flops), by job.")),
      train_checkpoint_seconds(GaugeFamily(*registry_, "tandem_train_checkpoint_write_seconds",
                                           "Time the latest checkpoint of a running job took to "
                                           "write (files fsynced and renamed), by job.")),
      train_checkpoint_bytes(GaugeFamily(*registry_, "tandem_train_checkpoint_size_bytes",
                                         "Size on disk of a running job's latest checkpoint, by "
                                         "job.")),
      train_progress_time(GaugeFamily(*registry_, "tandem_train_last_progress_timestamp_seconds",
                                      "When a running job last made progress (started, finished "
                                      "a step, an evaluation or a checkpoint), Unix time, by "
                                      "job.")),
      device_peak_flops(GaugeFamily(*registry_, "tandem_device_peak_flops",
                                    "FLOP/s the MFU estimate divides by: --peak_flops, or the "
                                    "device's float32 matmul rate measured when its first job "
                                    "started, by device.")),
      train_chunk_seconds(HistogramFamily(*registry_, "tandem_train_chunk_seconds",
                                          "Wall time of one training chunk (a slice of a "
                                          "micro-step), by device.")),
      preemption_seconds(HistogramFamily(*registry_, "tandem_preemption_seconds",
                                         "From inference work arriving while training held the "
                                         "device to its first operation, by device.")),
      train_share(GaugeFamily(*registry_, "tandem_train_share",
                              "Training's share of recent device time (decayed, half-life "
                              "2 s), by device.")) {}

Metrics::~Metrics() = default;

std::string Metrics::Serialize() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  for (prometheus::MetricFamily& f : ProcessMetricFamilies()) families.push_back(std::move(f));
  prometheus::TextSerializer serializer;
  return serializer.Serialize(families);
}

const prometheus::Histogram::BucketBoundaries& Metrics::LatencyBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  return *b;
}

const prometheus::Histogram::BucketBoundaries& Metrics::LoadBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
  return *b;
}

const prometheus::Histogram::BucketBoundaries& Metrics::PreemptionBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1};
  return *b;
}

const prometheus::Histogram::BucketBoundaries& Metrics::BatchBuckets() {
  static const auto* b =
      new prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256};
  return *b;
}

}  // namespace tandem

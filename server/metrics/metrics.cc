#include "server/metrics/metrics.h"

#include "absl/strings/str_cat.h"
#include "prometheus/text_serializer.h"

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
      active_sequences(GaugeFamily(*registry_, "tandem_active_sequences",
                                   "Sequences decoding now, by device.")),
      waiting_requests(GaugeFamily(*registry_, "tandem_waiting_requests",
                                   "Requests accepted but not yet started, by device.")),
      device_busy_seconds(CounterFamily(*registry_, "tandem_device_busy_seconds_total",
                                        "Seconds of device time, by device and work: text and "
                                        "image (inference iterations), train and eval (training "
                                        "units, which may overlap inference: they run at "
                                        "background priority), idle (nothing to do).")),
      model_info(GaugeFamily(*registry_, "tandem_model_parameters",
                             "Servable models (value: parameter count), by name, kind and "
                             "version.")),
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
      train_bits_per_byte(GaugeFamily(*registry_, "tandem_train_bits_per_byte",
                                      "Held-out bits per byte of the latest evaluation (text "
                                      "jobs), by job.")),
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
  prometheus::TextSerializer serializer;
  return serializer.Serialize(registry_->Collect());
}

const prometheus::Histogram::BucketBoundaries& Metrics::LatencyBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
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

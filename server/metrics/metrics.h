// Metrics: the server's Prometheus registry (prometheus-cpp core) and its metric families, which
// every layer records into; server/api/http_endpoint serves them. Thread-safe: every method may
// be called from any thread.
#ifndef TANDEM_SERVER_METRICS_METRICS_H_
#define TANDEM_SERVER_METRICS_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace tandem {

class Metrics {
  // Declared first: the families below are registered in it during construction.
  std::shared_ptr<prometheus::Registry> registry_;

 public:
  Metrics();
  ~Metrics();

  prometheus::Registry& registry() { return *registry_; }
  // The text exposition format of everything registered.
  std::string Serialize() const;

  // --- families (labels noted) ---
  // Generate calls by model, kind (text|image) and final gRPC code name.
  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Family<prometheus::Counter>& prompt_tokens;     // model
  prometheus::Family<prometheus::Counter>& generated_tokens;  // model
  prometheus::Family<prometheus::Histogram>& queue_seconds;   // model
  prometheus::Family<prometheus::Histogram>& ttft_seconds;    // model
  prometheus::Family<prometheus::Histogram>& request_seconds; // model
  prometheus::Family<prometheus::Histogram>& inter_token_seconds;  // model
  prometheus::Family<prometheus::Histogram>& decode_step_seconds;  // device
  prometheus::Family<prometheus::Histogram>& decode_batch_size;    // device
  prometheus::Family<prometheus::Histogram>& prefill_seconds;      // device
  prometheus::Family<prometheus::Histogram>& denoise_step_seconds; // device
  prometheus::Family<prometheus::Histogram>& denoise_batch_size;   // device (samples per step)
  prometheus::Family<prometheus::Counter>& generated_images;       // model
  prometheus::Family<prometheus::Gauge>& active_sequences;   // device
  prometheus::Family<prometheus::Gauge>& waiting_requests;   // device
  // device, work (text|image|train|eval|idle)
  prometheus::Family<prometheus::Counter>& device_busy_seconds;
  prometheus::Family<prometheus::Gauge>& model_info;  // name, kind, version; value = parameters
  // Training.
  prometheus::Family<prometheus::Gauge>& train_jobs;             // state
  prometheus::Family<prometheus::Counter>& train_steps;          // job, kind
  prometheus::Family<prometheus::Counter>& train_items;          // job, unit (tokens|images)
  prometheus::Family<prometheus::Gauge>& train_loss;             // job
  prometheus::Family<prometheus::Gauge>& train_learning_rate;    // job
  prometheus::Family<prometheus::Gauge>& train_eval_loss;        // job
  prometheus::Family<prometheus::Gauge>& train_bits_per_byte;    // job
  prometheus::Family<prometheus::Histogram>& train_chunk_seconds; // device
  prometheus::Family<prometheus::Histogram>& preemption_seconds;  // device
  prometheus::Family<prometheus::Gauge>& train_share;             // device

  static const prometheus::Histogram::BucketBoundaries& LatencyBuckets();
  static const prometheus::Histogram::BucketBoundaries& BatchBuckets();
  static const prometheus::Histogram::BucketBoundaries& PreemptionBuckets();  // 0.1 ms .. 1 s
};

}  // namespace tandem

#endif  // TANDEM_SERVER_METRICS_METRICS_H_

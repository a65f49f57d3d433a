// Metrics: the server's Prometheus registry (prometheus-cpp core) and its metric families, which
// every layer records into; server/api/http_endpoint serves them. Names follow Prometheus'
// conventions (base units, _total on counters only); README.md's "Metrics" table lists them all.
// Serialize adds the standard process_* families, read from /proc at scrape time.
// Thread-safe: every method may be called from any thread.
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
  // Inference capacity and queues (model, device): requests waiting for the device and running
  // on it; KV-cache slots (one per running text sequence) and image sample slots, used and in
  // all.
  prometheus::Family<prometheus::Gauge>& requests_waiting;
  prometheus::Family<prometheus::Gauge>& requests_running;
  prometheus::Family<prometheus::Gauge>& kv_slots_used;
  prometheus::Family<prometheus::Gauge>& kv_slots_capacity;
  prometheus::Family<prometheus::Gauge>& image_slots_used;
  prometheus::Family<prometheus::Gauge>& image_slots_capacity;
  // Generate calls refused before reaching a device: model ("unknown" when it did not resolve),
  // reason (max_pending, max_queue_per_model, shutting_down, or the validation's code:
  // invalid_argument, not_found, ...).
  prometheus::Family<prometheus::Counter>& requests_rejected;
  // device, work (text|image|train|eval|idle)
  prometheus::Family<prometheus::Counter>& device_busy_seconds;
  prometheus::Family<prometheus::Gauge>& model_info;  // model, kind, version; value = parameters
  // Building a version's instances on every device: model, reason (load: a new name; swap: a
  // new version of a served name).
  prometheus::Family<prometheus::Histogram>& model_load_seconds;
  prometheus::Family<prometheus::Gauge>& build_info;  // version, torch, cuda; value 1
  // Training. Job series are labelled job_id (a job= label would clash with Prometheus' own
  // target label) and live while the job's run does (server/jobs/job_metrics.h).
  prometheus::Family<prometheus::Gauge>& train_jobs;             // state
  prometheus::Family<prometheus::Counter>& train_steps;          // job_id, kind
  prometheus::Family<prometheus::Counter>& train_items;          // job_id, unit (tokens|images)
  prometheus::Family<prometheus::Gauge>& train_loss;             // job_id
  prometheus::Family<prometheus::Gauge>& train_learning_rate;    // job_id
  prometheus::Family<prometheus::Gauge>& train_eval_loss;        // job_id
  prometheus::Family<prometheus::Gauge>& train_bits_per_byte;    // job_id
  // Per running job (removed when its run ends): steps done and planned, the model FLOP
  // utilization of the latest step (text jobs), the latest checkpoint's write time and size, and
  // when the job last made progress (start, step, evaluation, checkpoint).
  prometheus::Family<prometheus::Gauge>& train_step;              // job_id
  prometheus::Family<prometheus::Gauge>& train_target_steps;      // job_id
  prometheus::Family<prometheus::Gauge>& train_mfu;               // job_id
  prometheus::Family<prometheus::Gauge>& train_checkpoint_seconds; // job_id
  prometheus::Family<prometheus::Gauge>& train_checkpoint_bytes;  // job_id
  prometheus::Family<prometheus::Gauge>& train_progress_time;     // job_id (Unix seconds)
  prometheus::Family<prometheus::Gauge>& device_peak_flops;       // device: the MFU denominator
  prometheus::Family<prometheus::Histogram>& train_chunk_seconds; // device
  prometheus::Family<prometheus::Histogram>& preemption_seconds;  // device
  prometheus::Family<prometheus::Gauge>& train_share;             // device

  static const prometheus::Histogram::BucketBoundaries& LatencyBuckets();
  static const prometheus::Histogram::BucketBoundaries& LoadBuckets();  // 10 ms .. 10 min
  static const prometheus::Histogram::BucketBoundaries& BatchBuckets();
  static const prometheus::Histogram::BucketBoundaries& PreemptionBuckets();  // 0.1 ms .. 1 s
};

}  // namespace tandem

#endif  // TANDEM_SERVER_METRICS_METRICS_H_

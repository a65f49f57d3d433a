// Metrics: the server's Prometheus registry (prometheus-cpp core) and the HTTP endpoint that
// serves it. prometheus-cpp's own pull Exposer (civetweb) cannot start in a process that links
// libtorch + OpenBLAS (thread stacks too small for their TLS), so /metrics is served by
// cpp-httplib from TextSerializer output. Thread-safe: every method may be called from any thread.
#ifndef TANDEM_SERVER_METRICS_METRICS_H_
#define TANDEM_SERVER_METRICS_METRICS_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace httplib {
class Server;
}

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

  // Serves GET /metrics (and /healthz) on host:port; port 0 picks a free one. Returns the port.
  absl::StatusOr<int> StartHttp(const std::string& listen);
  void StopHttp();

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
  prometheus::Family<prometheus::Counter>& device_busy_seconds;  // device, work (text|image|train)
  prometheus::Family<prometheus::Gauge>& model_info;  // name, kind, version; value = parameters
  // Training.
  prometheus::Family<prometheus::Gauge>& train_jobs;             // state
  prometheus::Family<prometheus::Counter>& train_steps;          // job, kind
  prometheus::Family<prometheus::Counter>& train_items;          // job, unit (tokens|images)
  prometheus::Family<prometheus::Gauge>& train_loss;             // job
  prometheus::Family<prometheus::Gauge>& train_learning_rate;    // job
  prometheus::Family<prometheus::Gauge>& train_eval_loss;        // job
  prometheus::Family<prometheus::Gauge>& train_bits_per_byte;    // job
  prometheus::Family<prometheus::Histogram>& train_step_seconds; // device

  static const prometheus::Histogram::BucketBoundaries& LatencyBuckets();
  static const prometheus::Histogram::BucketBoundaries& BatchBuckets();

 private:
  std::unique_ptr<httplib::Server> http_;
  std::thread http_thread_;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_METRICS_METRICS_H_

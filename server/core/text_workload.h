// TextWorkload: iteration-level batching of text generation on one device (Orca / llama.cpp
// server style: tasks in, results out keyed by request). Every RunIteration drops cancelled
// sequences, admits waiting prompts (prefill, within a token budget), then runs ONE batched decode
// step over every active sequence of each model instance. A finished or cancelled sequence leaves
// at once and frees its KV slot.
//
// Owned by a DeviceLoop; every method runs on that loop's thread (not thread-safe).
#ifndef TANDEM_SERVER_CORE_TEXT_WORKLOAD_H_
#define TANDEM_SERVER_CORE_TEXT_WORKLOAD_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "models/text/sampler.h"
#include "models/text_model.h"
#include "server/metrics/metrics.h"
#include "server/core/model_registry.h"
#include "server/core/response_stream.h"

namespace tandem {

// One validated text generation request, ready for a device.
struct TextRequest {
  std::string id;
  std::shared_ptr<const ModelEntry> model;
  std::vector<int32_t> prompt;  // BOS + the encoded prompt
  SamplingParams sampling;      // seed already chosen
  int max_tokens = 0;           // >= 1; prompt.size() + max_tokens <= seq_len
  std::vector<std::string> stop;
  bool include_token_ids = false;
  int priority = 0;
  absl::Time accepted;
  std::shared_ptr<ResponseStream> stream;
  std::function<void()> on_done;  // called once when the request leaves the device (any reason)
};

// Gives the workload the current instance of a model on its device, loading it when the entry is
// newer than what the device holds.
using ModelInstanceFn =
    std::function<absl::StatusOr<std::shared_ptr<TextModel>>(const ModelEntry&)>;

struct TextWorkloadOptions {
  std::string device = "cpu";
  // Prompt tokens prefilled per iteration at most (the first waiting prompt is always admitted),
  // so a long prompt delays the running streams by a bounded amount.
  int prefill_token_budget = 1024;
};

class TextWorkload {
 public:
  TextWorkload(TextWorkloadOptions options, ModelInstanceFn instances, Metrics* metrics);
  ~TextWorkload();

  void Admit(std::unique_ptr<TextRequest> request);
  bool HasWork() const { return !waiting_.empty() || !active_.empty(); }
  void RunIteration();
  // Ends every request with `status` (server stopping).
  void AbortAll(const absl::Status& status);

  int active() const { return static_cast<int>(active_.size()); }
  int waiting() const { return static_cast<int>(waiting_.size()); }

 private:
  struct Sequence;

  void DropCancelled();
  void AdmitWaiting();
  void DecodeActive();
  // Feeds one sampled token to the stream; returns false when the sequence finished.
  bool Emit(Sequence& seq, int32_t token);
  void Complete(Sequence& seq, int reason);
  void Release(Sequence& seq);
  void FailWaiting(std::unique_ptr<TextRequest> request, const absl::Status& status);
  void UpdateGauges();

  TextWorkloadOptions options_;
  ModelInstanceFn instances_;
  Metrics* metrics_;  // may be null (tests)
  std::deque<std::unique_ptr<TextRequest>> waiting_;  // priority order, then arrival
  std::vector<std::unique_ptr<Sequence>> active_;
  std::vector<float> logits_;  // scratch [batch, vocab]
  prometheus::Histogram* step_seconds_ = nullptr;
  prometheus::Histogram* batch_size_ = nullptr;
  prometheus::Histogram* prefill_seconds_ = nullptr;
  prometheus::Gauge* active_gauge_ = nullptr;
  prometheus::Gauge* waiting_gauge_ = nullptr;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_TEXT_WORKLOAD_H_

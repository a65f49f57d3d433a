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
#include <memory>
#include <string>
#include <vector>

#include "models/text_model.h"
#include "server/core/request.h"
#include "server/core/workload.h"
#include "server/metrics/metrics.h"

namespace tandem {

struct TextWorkloadOptions {
  std::string device = "cpu";
  // Prompt tokens prefilled per iteration at most (the first waiting prompt is always admitted),
  // so a long prompt delays the running streams by a bounded amount.
  int prefill_token_budget = 1024;
};

class TextWorkload final : public Workload {
 public:
  TextWorkload(TextWorkloadOptions options, int device_index, Metrics* metrics);
  ~TextWorkload() override;

  void Admit(std::unique_ptr<TextRequest> request);
  const char* name() const override { return "text"; }
  bool HasWork() const override { return !waiting_.empty() || !active_.empty(); }
  void RunIteration() override;
  void AbortAll(const absl::Status& status) override;

  int active() const { return active_.size(); }
  int waiting() const { return waiting_.size(); }

 private:
  struct Sequence;

  void DropCancelled();
  void AdmitWaiting();
  // Starts the head of the queue (slot, prefill, first token), fails it (its model would not
  // load), or leaves it waiting (no slot, or past the prefill budget).
  enum class Start { kStarted, kFailed, kWait };
  Start StartHead(int* budget, bool first);
  void DecodeActive();
  // Feeds one sampled token to the stream; returns false when the sequence finished.
  bool Emit(Sequence& seq, int32_t token);
  // Sends `text` and the token ids not yet sent (when the caller wants ids).
  void SendDelta(Sequence& seq, std::string text);
  void Complete(Sequence& seq, FinishReason reason);
  // Frees the slot and ends the request with `status`.
  void Release(Sequence& seq, const absl::Status& status);
  void UpdateGauges();

  TextWorkloadOptions options_;
  const int device_index_;  // the device's index among the registry's devices
  Metrics* metrics_;  // may be null (tests)
  RequestQueue<TextRequest> waiting_;
  RunningSet<Sequence> active_;
  std::vector<float> logits_;  // scratch [batch, vocab]
  prometheus::Histogram* step_seconds_ = nullptr;
  prometheus::Histogram* batch_size_ = nullptr;
  prometheus::Histogram* prefill_seconds_ = nullptr;
  prometheus::Gauge* active_gauge_ = nullptr;
  prometheus::Gauge* waiting_gauge_ = nullptr;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_TEXT_WORKLOAD_H_

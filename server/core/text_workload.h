// TextWorkload: iteration-level batching of text generation on one device (Orca / llama.cpp
// server style: tasks in, results out keyed by request). Every RunIteration drops cancelled
// sequences, admits waiting prompts while KV slots are free, feeds admitted prompts to the model
// in pieces within a per-iteration token budget (chunked prefill: a long prompt never stalls the
// running streams by more than the budget), then runs ONE batched decode step over every
// sequence that has a token to feed, per model instance. A finished or cancelled sequence leaves
// at once and frees its KV slot.
//
// Owned by a DeviceLoop; every method runs on that loop's thread (not thread-safe).
#ifndef TANDEM_SERVER_CORE_TEXT_WORKLOAD_H_
#define TANDEM_SERVER_CORE_TEXT_WORKLOAD_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "models/text_model.h"
#include "server/core/request.h"
#include "server/core/workload.h"
#include "server/metrics/gauge_set.h"
#include "server/metrics/metrics.h"

namespace tandem {

struct TextWorkloadOptions {
  std::string device = "cpu";
  // Prompt tokens prefilled per iteration at most; longer prompts are fed in pieces of this size
  // over several iterations.
  int prefill_token_budget = 512;
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
  void ForgetDonePrefills();
  void AdmitWaiting();
  // Gives the head of the queue a KV slot (true), or leaves it waiting for one (false).
  bool StartHead();
  void PrefillAdmitted();
  // Feeds the next `n` prompt tokens; when the prompt is done, samples and emits the first
  // token. False once the sequence is no longer prefilling.
  bool PrefillPiece(Sequence& seq, int n);
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
  std::deque<Sequence*> prefilling_;  // admitted, prompt not fully fed yet; oldest first
  std::vector<float> logits_;  // scratch [batch, vocab]
  prometheus::Histogram* step_seconds_ = nullptr;
  prometheus::Histogram* batch_size_ = nullptr;
  prometheus::Histogram* prefill_seconds_ = nullptr;
  GaugeSet waiting_gauges_, running_gauges_, slots_gauges_;  // by model
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_TEXT_WORKLOAD_H_

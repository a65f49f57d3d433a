// TextModel: one loaded LLM (weights plus a pool of per-sequence KV caches) on one device. The
// device loop that owns it is its only caller: implementations are not thread-safe, and every
// call runs on that loop's thread. Torch-free interface; the LibTorch implementation is llama.cc.
//
// A sequence holds a slot from AcquireSlot until ReleaseSlot. The slot's KV cache grows by every
// token passed to Prefill or Decode for it; SlotLength says how many positions it holds.
#ifndef TANDEM_MODELS_TEXT_MODEL_H_
#define TANDEM_MODELS_TEXT_MODEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "models/llama/llama_config.h"

namespace tandem {

class TextModel {
 public:
  virtual ~TextModel() = default;

  virtual const LlamaConfig& config() const = 0;
  virtual const std::string& device() const = 0;  // "cpu", "cuda:0", ...
  virtual int max_slots() const = 0;
  virtual int free_slots() const = 0;

  // Reserves a KV-cache slot (length 0). RESOURCE_EXHAUSTED when every slot is taken.
  virtual absl::StatusOr<int> AcquireSlot() = 0;
  // Frees the slot at once; its cache contents are dropped.
  virtual void ReleaseSlot(int slot) = 0;
  virtual int SlotLength(int slot) const = 0;

  // Appends `tokens` to the slot at positions [SlotLength, SlotLength + n) in one causal forward
  // and writes the logits of the last token to `logits` (vocab_size floats).
  // INVALID_ARGUMENT if the context would overflow seq_len.
  virtual absl::Status Prefill(int slot, absl::Span<const int32_t> tokens, float* logits) = 0;

  // One batched decode step: tokens[i] is appended to slots[i] (distinct slots) at its next
  // position. logits receives slots.size() rows of vocab_size floats, row i for slots[i]. A row
  // equals (within float rounding) what decoding that slot alone would give.
  virtual absl::Status Decode(absl::Span<const int> slots, absl::Span<const int32_t> tokens,
                              float* logits) = 0;

  // Full causal forward over `tokens` from position 0, no cache: logits for every position
  // (tokens.size() * vocab_size floats). For tests and evaluation.
  virtual absl::Status Forward(absl::Span<const int32_t> tokens, std::vector<float>* logits) = 0;

  virtual int64_t parameter_count() const = 0;
};

}  // namespace tandem

#endif  // TANDEM_MODELS_TEXT_MODEL_H_

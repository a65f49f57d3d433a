// Reading llama2.c's legacy checkpoint format (Karpathy's llama2.c, run.c; export.py's version 0):
// seven little-endian int32 header fields
//   dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
// then float32 weights in run.c's order (memory_map_weights): the token embeddings; per kind, the
// blocks of every layer (attention norms, wq, wk, wv, wo, ffn norms, w1, w2, w3); the final norm;
// the freq_cis tables (seq_len * head_dim floats, not returned); and, when the header's vocab_size
// is negative, an untied classifier [vocab, dim].
//
// Torch-free and model-free: the weights come out as float32 TensorData under tandem's Llama
// tensor names (the list at the top of models/llama/llama.h: tok_embeddings.weight,
// layers.{i}.attention.wq.weight, ..., output.weight when untied), the header as it was written.
// The caller decides what model that is. Reads on a little-endian host. Thread-compatible.
#ifndef TANDEM_MODELS_FORMATS_LLAMA2C_H_
#define TANDEM_MODELS_FORMATS_LLAMA2C_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "models/formats/safetensors.h"

namespace tandem {

// The header of a llama2.c checkpoint, validated: every size positive, n_heads divides dim,
// n_kv_heads divides n_heads, head_dim (dim / n_heads) even.
struct Llama2cHeader {
  int32_t dim = 0;
  int32_t hidden_dim = 0;
  int32_t n_layers = 0;
  int32_t n_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t vocab_size = 0;  // positive: the file stores it negated when the classifier is untied
  int32_t seq_len = 0;
  // The output projection is the token embedding table (tied); false: an output.weight follows.
  bool shared_classifier = true;

  int32_t head_dim() const { return dim / n_heads; }
};

struct Llama2cCheckpoint {
  Llama2cHeader header;
  TensorMap weights;  // float32, tandem's names and shapes
};

// Validates before it trusts: the header's values, then the file size against the size that
// header implies, to the byte. NOT_FOUND when `path` does not exist; INVALID_ARGUMENT when it is
// not a regular file; PERMISSION_DENIED when it cannot be opened; DATA_LOSS, naming the path and
// the header, when the file is shorter than a header, its header is implausible (a size <= 0 or
// above 2^20) or inconsistent, or its size is not what the header implies (truncated, or not a
// legacy llama2.c checkpoint).
absl::StatusOr<Llama2cCheckpoint> ReadLlama2cCheckpoint(const std::string& path);

}  // namespace tandem

#endif  // TANDEM_MODELS_FORMATS_LLAMA2C_H_

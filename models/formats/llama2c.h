// llama2.c checkpoints (Karpathy's llama2.c: run.c, runq.c, export.py), read and written.
//
// Three layouts, all little-endian:
//   version 0 (legacy; what run.c reads): seven int32 header fields
//       dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//     (vocab_size negated when an untied classifier is stored), then float32 arrays in run.c's
//     order (memory_map_weights): the token embeddings; per kind, the blocks of every layer
//     (attention norms, wq, wk, wv, wo, ffn norms, w1, w2, w3); the final norm; the two legacy
//     RoPE tables (cos, then sin: seq_len x head_dim/2 floats each; skipped on reading, written
//     as export.py does); and the classifier [vocab, dim] when untied.
//   version 1 (export.py version1_export): a 256-byte header (uint32 magic 0x616b3432 "ak42",
//     int32 version, the seven int32 fields with vocab_size positive, uint8 shared_classifier,
//     zeros), then float32: every attention norm, every ffn norm, the final norm, the token
//     embeddings, every wq, wk, wv, wo, w1, w2, w3, and the classifier when untied.
//   version 2 (export.py version2_export; what runq.c reads): the version 1 header with an int32
//     group_size right after the flag byte (offset 37), then the norms in float32 as in version
//     1, then Q8_0 tensors — the token embeddings, every wq, wk, wv, wo, w1, w2, w3, the
//     classifier when untied — each as int8 values followed by one float32 scale per group of
//     group_size values (value = int8 * scale).
//
// Torch-free and model-free: weights come out (and go in) as float32 TensorData under tandem's
// Llama tensor names (the list at the top of models/llama/llama.h: tok_embeddings.weight,
// layers.{i}.attention.wq.weight, ..., output.weight when untied); version 2 is dequantized on
// reading and quantized on writing exactly as export.py's quantize_q80 does. The caller decides
// what model that is. Little-endian hosts only. Thread-compatible.
#ifndef TANDEM_MODELS_FORMATS_LLAMA2C_H_
#define TANDEM_MODELS_FORMATS_LLAMA2C_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "models/formats/safetensors.h"

namespace tandem {

inline constexpr uint32_t kLlama2cMagic = 0x616b3432;  // "ak42"
// export.py's default Q8_0 group size, halved until it divides dim (and, here, hidden_dim).
inline constexpr int kLlama2cDefaultGroupSize = 64;

// The header of a llama2.c checkpoint, validated on reading: every size positive, n_heads
// divides dim, n_kv_heads divides n_heads, head_dim (dim / n_heads) even; version 2: group_size
// positive and dividing dim and hidden_dim.
struct Llama2cHeader {
  int32_t dim = 0;
  int32_t hidden_dim = 0;
  int32_t n_layers = 0;
  int32_t n_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t vocab_size = 0;  // positive (version 0 stores it negated when the classifier is untied)
  int32_t seq_len = 0;
  // The output projection is the token embedding table (tied); false: an output.weight follows.
  bool shared_classifier = true;
  int version = 0;     // 0 (legacy), 1 (float32) or 2 (Q8_0)
  int group_size = 0;  // version 2: values per Q8_0 scale; 0 when writing = the default rule

  int32_t head_dim() const { return dim / n_heads; }
};

struct Llama2cCheckpoint {
  Llama2cHeader header;
  TensorMap weights;  // float32, tandem's names and shapes
};

// Reads any of the three versions (a file starting with the magic is versioned, else legacy).
// Validates before it trusts: the header's values, then the file size against the size that
// header implies, to the byte. NOT_FOUND when `path` does not exist; INVALID_ARGUMENT when it is
// not a regular file or is a version other than 0, 1 or 2; PERMISSION_DENIED when it cannot be
// opened; DATA_LOSS, naming the path and the header, when the file is shorter than a header, its
// header is implausible (a size <= 0 or above 2^20) or inconsistent, or its size is not what the
// header implies (truncated, or not a llama2.c checkpoint).
absl::StatusOr<Llama2cCheckpoint> ReadLlama2cCheckpoint(const std::string& path);

// The file bytes of `checkpoint` in header.version's layout (group_size 0 in version 2 picks
// kLlama2cDefaultGroupSize, halved until it divides dim and hidden_dim). INVALID_ARGUMENT when
// the header is inconsistent (as on reading), a tensor is missing, not float32 or of the wrong
// shape, or version 2's group_size does not divide dim and hidden_dim.
absl::StatusOr<std::string> SerializeLlama2cCheckpoint(const Llama2cCheckpoint& checkpoint);

}  // namespace tandem

#endif  // TANDEM_MODELS_FORMATS_LLAMA2C_H_

#include "models/formats/llama2c.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

constexpr int kHeaderFields = 7;
constexpr int64_t kHeaderBytes = kHeaderFields * sizeof(int32_t);
// No header field may exceed this: it keeps every size product below 2^63 and rejects garbage
// long before it turns into an absurd allocation.
constexpr int64_t kMaxField = int64_t{1} << 20;

// The header as written, for messages: "[64, 172, 5, 8, 4, 512, 512]".
std::string HeaderString(const int32_t (&raw)[kHeaderFields]) {
  return absl::StrCat("[", absl::StrJoin(raw, raw + kHeaderFields, ", "), "]");
}

absl::StatusOr<Llama2cHeader> ParseHeader(const std::string& path,
                                          const int32_t (&raw)[kHeaderFields]) {
  Llama2cHeader h;
  h.dim = raw[0];
  h.hidden_dim = raw[1];
  h.n_layers = raw[2];
  h.n_heads = raw[3];
  h.n_kv_heads = raw[4];
  h.shared_classifier = raw[5] > 0;  // a negative vocab_size: an untied classifier follows
  // |vocab_size|, capped so that a garbage value fails the bound below instead of overflowing.
  h.vocab_size =
      static_cast<int32_t>(std::min(std::abs(static_cast<int64_t>(raw[5])), kMaxField + 1));
  h.seq_len = raw[6];
  for (int64_t v :
       {h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len}) {
    if (v <= 0 || v > kMaxField) {
      return absl::DataLossError(absl::StrCat(path, ": implausible llama2.c header ",
                                              HeaderString(raw), " (every size in [1, 2^20])"));
    }
  }
  if (h.dim % h.n_heads != 0 || h.n_heads % h.n_kv_heads != 0 || h.head_dim() % 2 != 0) {
    return absl::DataLossError(
        absl::StrCat(path, ": inconsistent llama2.c header ", HeaderString(raw),
                     " (need n_heads | dim, n_kv_heads | n_heads and an even dim / n_heads)"));
  }
  return h;
}

// One tensor of run.c's layout: its tandem name (a per-layer suffix for the layer blocks) and
// shape.
struct Block {
  std::string name;
  std::vector<int64_t> shape;
};

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The per-layer blocks, in run.c's order: each holds one tensor of this shape for every layer.
std::vector<Block> LayerBlocks(const Llama2cHeader& h) {
  const int64_t dim = h.dim, hidden = h.hidden_dim;
  const int64_t q_dim = int64_t{h.n_heads} * h.head_dim();
  const int64_t kv_dim = int64_t{h.n_kv_heads} * h.head_dim();
  return {
      {"attention_norm.weight", {dim}},          {"attention.wq.weight", {q_dim, dim}},
      {"attention.wk.weight", {kv_dim, dim}},    {"attention.wv.weight", {kv_dim, dim}},
      {"attention.wo.weight", {dim, q_dim}},     {"ffn_norm.weight", {dim}},
      {"feed_forward.w1.weight", {hidden, dim}}, {"feed_forward.w2.weight", {dim, hidden}},
      {"feed_forward.w3.weight", {hidden, dim}},
  };
}

// The floats of the freq_cis tables (real and imaginary halves) that run.c's legacy export
// writes between the final norm and the classifier.
int64_t FreqCisFloats(const Llama2cHeader& h) { return int64_t{h.seq_len} * h.head_dim(); }

// The file size the header implies, counted in 128 bits (it can exceed 2^63 for a header of
// garbage that passed the per-field bounds).
__int128 ExpectedFileSize(const Llama2cHeader& h) {
  const __int128 embedding = static_cast<__int128>(h.vocab_size) * h.dim;
  __int128 per_layer = 0;
  for (const Block& b : LayerBlocks(h)) per_layer += Numel(b.shape);
  const __int128 floats = embedding + per_layer * h.n_layers + h.dim + FreqCisFloats(h) +
                          (h.shared_classifier ? 0 : embedding);
  return kHeaderBytes + floats * static_cast<__int128>(sizeof(float));
}

std::string SizeString(__int128 bytes) {
  return bytes <= std::numeric_limits<int64_t>::max() ? absl::StrCat(static_cast<int64_t>(bytes))
                                                      : std::string("over 2^63");
}

// Reads one float32 tensor of `shape` from `in`.
TensorData ReadTensor(std::ifstream& in, std::vector<int64_t> shape) {
  TensorData t;
  t.dtype = DType::kF32;
  t.bytes.resize(static_cast<size_t>(Numel(shape)) * sizeof(float));
  in.read(t.bytes.data(), static_cast<std::streamsize>(t.bytes.size()));
  t.shape = std::move(shape);
  return t;
}

// The weights after the header, in run.c's order, under tandem's names.
TensorMap ReadWeights(std::ifstream& in, const Llama2cHeader& h) {
  TensorMap out;
  const int64_t vocab = h.vocab_size, dim = h.dim;
  out["tok_embeddings.weight"] = ReadTensor(in, {vocab, dim});
  for (const Block& b : LayerBlocks(h)) {
    for (int32_t l = 0; l < h.n_layers; ++l) {
      out[absl::StrCat("layers.", l, ".", b.name)] = ReadTensor(in, b.shape);
    }
  }
  out["norm.weight"] = ReadTensor(in, {dim});
  in.seekg(static_cast<std::streamoff>(FreqCisFloats(h) * sizeof(float)), std::ios::cur);
  if (!h.shared_classifier) out["output.weight"] = ReadTensor(in, {vocab, dim});
  return out;
}

}  // namespace

absl::StatusOr<Llama2cCheckpoint> ReadLlama2cCheckpoint(const std::string& path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) {
    return absl::NotFoundError(absl::StrCat("no llama2.c checkpoint at ", path));
  }
  if (!fs::is_regular_file(status)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a file (a llama2.c checkpoint is one .bin file)"));
  }
  const int64_t file_size = static_cast<int64_t>(fs::file_size(path, ec));
  std::ifstream in(path, std::ios::binary);
  if (ec || !in) return absl::PermissionDeniedError(absl::StrCat("cannot open ", path));

  int32_t raw[kHeaderFields];
  if (file_size < kHeaderBytes || !in.read(reinterpret_cast<char*>(raw), kHeaderBytes)) {
    return absl::DataLossError(absl::StrCat(path, ": ", file_size, " bytes, shorter than the ",
                                            kHeaderBytes, "-byte llama2.c header"));
  }
  absl::StatusOr<Llama2cHeader> header = ParseHeader(path, raw);
  if (!header.ok()) return header.status();
  const __int128 expected_size = ExpectedFileSize(*header);
  if (file_size != expected_size) {
    return absl::DataLossError(absl::StrCat(
        path, ": ", file_size, " bytes, but a llama2.c checkpoint with header ", HeaderString(raw),
        " has ", SizeString(expected_size), " (truncated, or not a llama2.c legacy checkpoint)"));
  }

  Llama2cCheckpoint out;
  out.header = *header;
  out.weights = ReadWeights(in, out.header);
  if (!in) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return out;
}

}  // namespace tandem

#include "models/formats/llama2c.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "llama2.c I/O assumes little-endian");

namespace tandem {
namespace {

namespace fs = std::filesystem;

constexpr int kHeaderFields = 7;
constexpr int64_t kLegacyHeaderBytes = kHeaderFields * sizeof(int32_t);
constexpr int64_t kVersionedHeaderBytes = 256;
// Offsets in the versioned header: magic, version, the seven fields, the flag byte, group_size.
constexpr int64_t kFieldsOffset = 8;
constexpr int64_t kSharedOffset = kFieldsOffset + kLegacyHeaderBytes;  // 36
constexpr int64_t kGroupSizeOffset = kSharedOffset + 1;                // 37
// No header field may exceed this: it keeps every size product below 2^63 and rejects garbage
// long before it turns into an absurd allocation.
constexpr int64_t kMaxField = int64_t{1} << 20;

int64_t HeaderBytes(int version) {
  return version == 0 ? kLegacyHeaderBytes : kVersionedHeaderBytes;
}

// The header as a message shows it: "[64, 172, 5, 8, 4, 512, 512]" (as stored), with the version,
// flag and group size of a versioned file.
std::string HeaderString(const Llama2cHeader& h, const int32_t (&raw)[kHeaderFields]) {
  std::string s = absl::StrCat("[", absl::StrJoin(raw, raw + kHeaderFields, ", "), "]");
  if (h.version == 0) return s;
  absl::StrAppend(&s, " (version ", h.version, ", shared_classifier ", h.shared_classifier);
  if (h.version == 2) absl::StrAppend(&s, ", group_size ", h.group_size);
  return s + ")";
}

// Why a header cannot describe a model: "implausible" or "inconsistent", and what is needed.
struct HeaderProblem {
  const char* what;
  const char* need;
};

std::optional<HeaderProblem> FindHeaderProblem(const Llama2cHeader& h) {
  for (int64_t v :
       {h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len}) {
    if (v <= 0 || v > kMaxField) return HeaderProblem{"implausible", "every size in [1, 2^20]"};
  }
  if (h.dim % h.n_heads != 0 || h.n_heads % h.n_kv_heads != 0 || h.head_dim() % 2 != 0) {
    return HeaderProblem{"inconsistent",
                         "need n_heads | dim, n_kv_heads | n_heads and an even dim / n_heads"};
  }
  if (h.version == 2 && (h.group_size <= 0 || h.group_size > kMaxField || h.dim % h.group_size)) {
    return HeaderProblem{"inconsistent", "need a positive group_size that divides dim"};
  }
  return std::nullopt;
}

// One tensor of a layout: its tandem name and shape, and how it is stored.
enum class Encoding { kF32, kQ8, kRopeTables };
struct Segment {
  std::string name;  // empty for the RoPE tables
  std::vector<int64_t> shape;
  Encoding encoding;
};

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

struct Block {
  const char* name;
  std::vector<int64_t> shape;
};

// The per-layer tensors by kind, in run.c's order within the legacy layout.
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

// Every tensor of header.version's file after the header, in file order.
std::vector<Segment> Layout(const Llama2cHeader& h) {
  const int64_t vocab = h.vocab_size, dim = h.dim;
  const Encoding matrix = h.version == 2 ? Encoding::kQ8 : Encoding::kF32;
  std::vector<Segment> out;
  auto add_layers = [&](const Block& b, Encoding e) {
    for (int32_t l = 0; l < h.n_layers; ++l) {
      out.push_back({absl::StrCat("layers.", l, ".", b.name), b.shape, e});
    }
  };
  const std::vector<Block> blocks = LayerBlocks(h);
  if (h.version == 0) {
    out.push_back({"tok_embeddings.weight", {vocab, dim}, Encoding::kF32});
    for (const Block& b : blocks) add_layers(b, Encoding::kF32);
    out.push_back({"norm.weight", {dim}, Encoding::kF32});
    out.push_back({"", {2, h.seq_len, h.head_dim() / 2}, Encoding::kRopeTables});
  } else {
    for (const Block& b : blocks) {
      if (b.shape.size() == 1) add_layers(b, Encoding::kF32);  // the norms first
    }
    out.push_back({"norm.weight", {dim}, Encoding::kF32});
    out.push_back({"tok_embeddings.weight", {vocab, dim}, matrix});
    for (const Block& b : blocks) {
      if (b.shape.size() == 2) add_layers(b, matrix);
    }
  }
  if (!h.shared_classifier) out.push_back({"output.weight", {vocab, dim}, matrix});
  return out;
}

// Bytes of one segment in the file.
__int128 SegmentBytes(const Segment& s, int group_size) {
  const __int128 n = Numel(s.shape);
  if (s.encoding == Encoding::kQ8) return n + n / group_size * __int128{sizeof(float)};
  return n * __int128{sizeof(float)};
}

// The file size the header implies, counted in 128 bits (it can exceed 2^63 for a header of
// garbage that passed the per-field bounds).
__int128 ExpectedFileSize(const Llama2cHeader& h) {
  __int128 total = HeaderBytes(h.version);
  for (const Segment& s : Layout(h)) total += SegmentBytes(s, h.group_size);
  return total;
}

std::string SizeString(__int128 bytes) {
  return bytes <= std::numeric_limits<int64_t>::max() ? absl::StrCat(static_cast<int64_t>(bytes))
                                                      : std::string("over 2^63");
}

template <typename T>
T ReadAt(const std::string& bytes, int64_t offset) {
  T v;
  std::memcpy(&v, bytes.data() + offset, sizeof(T));
  return v;
}

// The header fields of the file starting with `head` (its first up to 256 bytes), before
// validation; *raw receives the seven fields as stored.
absl::StatusOr<Llama2cHeader> DecodeHeader(const std::string& path, const std::string& head,
                                           int64_t file_size, int32_t (&raw)[kHeaderFields]) {
  Llama2cHeader h;
  const bool versioned = file_size >= 4 && ReadAt<uint32_t>(head, 0) == kLlama2cMagic;
  if (versioned) {
    if (file_size < kVersionedHeaderBytes) {
      return absl::DataLossError(absl::StrCat(path, ": ", file_size,
                                              " bytes, shorter than the 256-byte header of a "
                                              "versioned llama2.c checkpoint"));
    }
    h.version = ReadAt<int32_t>(head, 4);
    if (h.version != 1 && h.version != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": llama2.c checkpoint version ", h.version,
                       " is not supported (tandem reads versions 0, 1 and 2)"));
    }
    std::memcpy(raw, head.data() + kFieldsOffset, sizeof(raw));
    h.shared_classifier = head[kSharedOffset] != 0;
    if (h.version == 2) h.group_size = ReadAt<int32_t>(head, kGroupSizeOffset);
  } else {
    if (file_size < kLegacyHeaderBytes) {
      return absl::DataLossError(absl::StrCat(path, ": ", file_size, " bytes, shorter than the ",
                                              kLegacyHeaderBytes, "-byte llama2.c header"));
    }
    std::memcpy(raw, head.data(), sizeof(raw));
    h.shared_classifier = raw[5] > 0;  // a negative vocab_size: an untied classifier follows
  }
  h.dim = raw[0];
  h.hidden_dim = raw[1];
  h.n_layers = raw[2];
  h.n_heads = raw[3];
  h.n_kv_heads = raw[4];
  // Version 0: |vocab_size|, capped so that a garbage value fails the bounds instead of
  // overflowing. Versioned files store it positive; a negative one stays negative (implausible).
  h.vocab_size =
      versioned
          ? raw[5]
          : static_cast<int32_t>(std::min(std::abs(static_cast<int64_t>(raw[5])), kMaxField + 1));
  h.seq_len = raw[6];
  return h;
}

// Reads one segment's floats (dequantized for Q8) from `in`.
TensorData ReadSegment(std::ifstream& in, const Segment& s, int group_size) {
  TensorData t;
  t.dtype = DType::kF32;
  t.shape = s.shape;
  const int64_t n = Numel(s.shape);
  t.bytes.resize(static_cast<size_t>(n) * sizeof(float));
  if (s.encoding != Encoding::kQ8) {
    in.read(t.bytes.data(), static_cast<std::streamsize>(t.bytes.size()));
    return t;
  }
  std::vector<int8_t> q(static_cast<size_t>(n));
  std::vector<float> scales(static_cast<size_t>(n / group_size));
  in.read(reinterpret_cast<char*>(q.data()), static_cast<std::streamsize>(q.size()));
  in.read(reinterpret_cast<char*>(scales.data()),
          static_cast<std::streamsize>(scales.size() * sizeof(float)));
  float* out = reinterpret_cast<float*>(t.bytes.data());
  for (int64_t i = 0; i < n; ++i) out[i] = q[i] * scales[i / group_size];  // runq.c dequantize
  return t;
}

// ---- writing -------------------------------------------------------------------------------

void AppendRaw(std::string* out, const void* p, size_t n) {
  out->append(static_cast<const char*>(p), n);
}

// export.py's quantize_q80: per group, scale = max|w| / 127 and q = round-half-even(w / scale).
void AppendQ8(std::string* out, const float* w, int64_t n, int group_size) {
  std::vector<int8_t> q(static_cast<size_t>(n));
  std::vector<float> scales(static_cast<size_t>(n / group_size));
  for (int64_t g = 0; g < n / group_size; ++g) {
    const float* v = w + g * group_size;
    float wmax = 0.0f;
    for (int i = 0; i < group_size; ++i) wmax = std::max(wmax, std::fabs(v[i]));
    const float scale = wmax / 127.0f;
    scales[g] = scale;
    for (int i = 0; i < group_size; ++i) {
      // An all-zero group has scale 0: its values stay 0.
      q[g * group_size + i] = scale == 0.0f ? 0 : static_cast<int8_t>(std::nearbyint(v[i] / scale));
    }
  }
  AppendRaw(out, q.data(), q.size());
  AppendRaw(out, scales.data(), scales.size() * sizeof(float));
}

// model.py's precompute_freqs_cis(head_dim, seq_len): cos, then sin, of pos * 10000^(-2i/hd).
void AppendRopeTables(std::string* out, const Llama2cHeader& h) {
  const int hd = h.head_dim();
  for (int table = 0; table < 2; ++table) {
    for (int pos = 0; pos < h.seq_len; ++pos) {
      for (int i = 0; i < hd / 2; ++i) {
        const float freq = 1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / hd);
        const float angle = static_cast<float>(pos) * freq;
        const float v = table == 0 ? std::cos(angle) : std::sin(angle);
        AppendRaw(out, &v, sizeof(v));
      }
    }
  }
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// The header bytes of `h` (version 0: vocab_size negated when untied).
std::string SerializeHeader(const Llama2cHeader& h) {
  const int32_t vocab = h.version == 0 && !h.shared_classifier ? -h.vocab_size : h.vocab_size;
  const int32_t fields[kHeaderFields] = {h.dim,        h.hidden_dim, h.n_layers, h.n_heads,
                                         h.n_kv_heads, vocab,        h.seq_len};
  std::string out;
  if (h.version == 0) {
    AppendRaw(&out, fields, sizeof(fields));
    return out;
  }
  out.assign(kVersionedHeaderBytes, '\0');
  std::memcpy(&out[0], &kLlama2cMagic, sizeof(kLlama2cMagic));
  const int32_t version = h.version;
  std::memcpy(&out[4], &version, sizeof(version));
  std::memcpy(&out[kFieldsOffset], fields, sizeof(fields));
  out[kSharedOffset] = h.shared_classifier ? 1 : 0;
  if (h.version == 2) {
    const int32_t group = h.group_size;
    std::memcpy(&out[kGroupSizeOffset], &group, sizeof(group));
  }
  return out;
}

// export.py's group size rule (halve until it divides dim), here also dividing hidden_dim, which
// runq.c's matmuls and activation quantization need.
int DefaultGroupSize(const Llama2cHeader& h) {
  int g = kLlama2cDefaultGroupSize;
  while (g > 1 && (h.dim % g != 0 || h.hidden_dim % g != 0)) g /= 2;
  return g;
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

  std::string head(static_cast<size_t>(std::min(file_size, kVersionedHeaderBytes)), '\0');
  if (!in.read(head.data(), static_cast<std::streamsize>(head.size()))) {
    return absl::DataLossError(absl::StrCat(path, ": read failed"));
  }
  head.resize(kVersionedHeaderBytes, '\0');
  int32_t raw[kHeaderFields] = {};
  absl::StatusOr<Llama2cHeader> header = DecodeHeader(path, head, file_size, raw);
  if (!header.ok()) return header.status();
  if (std::optional<HeaderProblem> problem = FindHeaderProblem(*header)) {
    return absl::DataLossError(absl::StrCat(path, ": ", problem->what, " llama2.c header ",
                                            HeaderString(*header, raw), " (", problem->need, ")"));
  }
  const __int128 expected_size = ExpectedFileSize(*header);
  if (file_size != expected_size) {
    return absl::DataLossError(
        absl::StrCat(path, ": ", file_size, " bytes, but a llama2.c checkpoint with header ",
                     HeaderString(*header, raw), " has ", SizeString(expected_size),
                     " (truncated, or not a llama2.c checkpoint of that version)"));
  }

  Llama2cCheckpoint out;
  out.header = *header;
  in.seekg(HeaderBytes(out.header.version));
  for (const Segment& s : Layout(out.header)) {
    if (s.encoding == Encoding::kRopeTables) {
      in.seekg(static_cast<std::streamoff>(SegmentBytes(s, 0)), std::ios::cur);
      continue;
    }
    out.weights[s.name] = ReadSegment(in, s, out.header.group_size);
  }
  if (!in) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return out;
}

absl::StatusOr<std::string> SerializeLlama2cCheckpoint(const Llama2cCheckpoint& checkpoint) {
  Llama2cHeader h = checkpoint.header;
  if (h.version < 0 || h.version > 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("llama2.c version ", h.version, " does not exist (0, 1 or 2)"));
  }
  if (h.version == 2 && h.group_size == 0) h.group_size = DefaultGroupSize(h);
  if (std::optional<HeaderProblem> problem = FindHeaderProblem(h)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write a llama2.c checkpoint: ", problem->what, " header [", h.dim,
                     ", ", h.hidden_dim, ", ", h.n_layers, ", ", h.n_heads, ", ", h.n_kv_heads,
                     ", ", h.vocab_size, ", ", h.seq_len, "] (", problem->need, ")"));
  }
  if (h.version == 2 && h.hidden_dim % h.group_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("group_size ", h.group_size,
                                                   " must divide hidden_dim ", h.hidden_dim,
                                                   " (runq.c quantizes activations in groups)"));
  }
  const std::vector<Segment> layout = Layout(h);
  for (const Segment& s : layout) {
    if (s.encoding == Encoding::kRopeTables) continue;
    auto it = checkpoint.weights.find(s.name);
    if (it == checkpoint.weights.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write a llama2.c checkpoint: no ", s.name));
    }
    if (it->second.dtype != DType::kF32 || it->second.shape != s.shape ||
        it->second.bytes.size() != static_cast<size_t>(Numel(s.shape)) * sizeof(float)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot write a llama2.c checkpoint: ", s.name, " is ", DTypeName(it->second.dtype), " ",
          ShapeString(it->second.shape), ", expected F32 ", ShapeString(s.shape)));
    }
  }
  std::string out = SerializeHeader(h);
  out.reserve(static_cast<size_t>(ExpectedFileSize(h)));
  for (const Segment& s : layout) {
    if (s.encoding == Encoding::kRopeTables) {
      AppendRopeTables(&out, h);
      continue;
    }
    const std::string& bytes = checkpoint.weights.at(s.name).bytes;
    if (s.encoding == Encoding::kF32) {
      out += bytes;
    } else {
      AppendQ8(&out, reinterpret_cast<const float*>(bytes.data()), Numel(s.shape), h.group_size);
    }
  }
  return out;
}

}  // namespace tandem

// The llama2.c checkpoint reader and writer (models/formats/llama2c.h) on hand-made files: run.c's
// legacy layout and export.py's versions 1 and 2 under tandem's names, the validation of the
// header and the file size, and export.py's Q8_0 quantization. The real stories260K checkpoint
// through the model is tests/models/llama/llama2c_test.cc.
#include "models/formats/llama2c.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "tests/testing/base/files.h"
#include "tests/testing/base/matchers.h"

namespace tandem {
namespace {

using testing::Contains;

// dim 8, hidden 16, 2 layers, 2 heads of 4, 1 kv head, vocab 10, seq_len 3.
constexpr int32_t kDim = 8, kHidden = 16, kLayers = 2, kHeads = 2, kKvHeads = 1, kVocab = 10,
                  kSeqLen = 3;
constexpr int32_t kHeadDim = kDim / kHeads, kKvDim = kKvHeads * kHeadDim;

// Floats of one layer, in run.c's order of blocks.
constexpr int64_t kLayerFloats =
    kDim + kDim * kDim + 2 * kKvDim * kDim + kDim * kDim + kDim + 3 * kHidden * kDim;

std::string Header(int32_t vocab_size) {
  const int32_t h[7] = {kDim, kHidden, kLayers, kHeads, kKvHeads, vocab_size, kSeqLen};
  return std::string(reinterpret_cast<const char*>(h), sizeof(h));
}

// n floats counting up from `first`.
std::string Floats(int64_t n, float first) {
  std::string out(static_cast<size_t>(n) * sizeof(float), '\0');
  for (int64_t i = 0; i < n; ++i) {
    const float v = first + static_cast<float>(i);
    std::memcpy(&out[i * sizeof(float)], &v, sizeof(float));
  }
  return out;
}

// The weights of a checkpoint as run.c lays them out, every float its own index.
std::string Weights(bool shared) {
  const int64_t n = int64_t{kVocab} * kDim + kLayers * kLayerFloats + kDim +
                    int64_t{kSeqLen} * kHeadDim + (shared ? 0 : int64_t{kVocab} * kDim);
  return Floats(n, 0.0f);
}

float FirstFloat(const TensorData& t) {
  float v = 0;
  std::memcpy(&v, t.bytes.data(), sizeof(float));
  return v;
}

class Llama2cReaderTest : public testing::TempDirTest {};

TEST_F(Llama2cReaderTest, ReadsRunCLayoutUnderTandemNames) {
  const std::string path = Path("untied.bin");
  testing::WriteAll(path, Header(-kVocab) + Weights(/*shared=*/false));
  absl::StatusOr<Llama2cCheckpoint> ckpt = ReadLlama2cCheckpoint(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const Llama2cHeader& h = ckpt->header;
  EXPECT_EQ(h.dim, kDim);
  EXPECT_EQ(h.hidden_dim, kHidden);
  EXPECT_EQ(h.n_layers, kLayers);
  EXPECT_EQ(h.n_heads, kHeads);
  EXPECT_EQ(h.n_kv_heads, kKvHeads);
  EXPECT_EQ(h.vocab_size, kVocab);
  EXPECT_EQ(h.seq_len, kSeqLen);
  EXPECT_FALSE(h.shared_classifier);
  const TensorMap& w = ckpt->weights;
  EXPECT_EQ(w.size(), 2u + 9 * kLayers + 1);
  EXPECT_EQ(w.at("tok_embeddings.weight").shape, (std::vector<int64_t>{kVocab, kDim}));
  EXPECT_EQ(w.at("layers.1.attention.wk.weight").shape, (std::vector<int64_t>{kKvDim, kDim}));
  EXPECT_EQ(w.at("layers.0.feed_forward.w2.weight").shape, (std::vector<int64_t>{kDim, kHidden}));
  // Blocks hold every layer in turn: layer 1's attention norm follows layer 0's.
  const float embedding = kVocab * kDim;
  EXPECT_EQ(FirstFloat(w.at("layers.0.attention_norm.weight")), embedding);
  EXPECT_EQ(FirstFloat(w.at("layers.1.attention_norm.weight")), embedding + kDim);
  EXPECT_EQ(FirstFloat(w.at("layers.0.attention.wq.weight")), embedding + kLayers * kDim);
  // The final norm after the layers, then freq_cis skipped before the classifier.
  const float norm = embedding + kLayers * kLayerFloats;
  EXPECT_EQ(FirstFloat(w.at("norm.weight")), norm);
  EXPECT_EQ(FirstFloat(w.at("output.weight")), norm + kDim + kSeqLen * kHeadDim);
}

TEST_F(Llama2cReaderTest, SharedClassifierHasNoOutputWeight) {
  const std::string path = Path("tied.bin");
  testing::WriteAll(path, Header(kVocab) + Weights(/*shared=*/true));
  absl::StatusOr<Llama2cCheckpoint> ckpt = ReadLlama2cCheckpoint(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE(ckpt->header.shared_classifier);
  EXPECT_EQ(ckpt->weights.count("output.weight"), 0u);
}

TEST_F(Llama2cReaderTest, RejectsWhatIsNotACheckpoint) {
  EXPECT_EQ(ReadLlama2cCheckpoint(Path("missing.bin")).status().code(),
            absl::StatusCode::kNotFound);
  const absl::Status dir = ReadLlama2cCheckpoint(dir_).status();
  EXPECT_EQ(dir.code(), absl::StatusCode::kInvalidArgument) << dir;

  const std::string path = Path("bad.bin");
  testing::WriteAll(path, Header(kVocab).substr(0, 27));
  absl::Status s = ReadLlama2cCheckpoint(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(s.message(), "shorter than the 28-byte llama2.c header"));

  const int32_t zero_heads[7] = {kDim, kHidden, kLayers, 0, kKvHeads, kVocab, kSeqLen};
  testing::WriteAll(path, std::string(reinterpret_cast<const char*>(zero_heads), 28));
  s = ReadLlama2cCheckpoint(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(s.message(), "implausible llama2.c header [8, 16, 2, 0, 1, 10, 3]"));

  const int32_t odd_head_dim[7] = {6, kHidden, kLayers, 2, 1, kVocab, kSeqLen};  // head_dim 3
  testing::WriteAll(path, std::string(reinterpret_cast<const char*>(odd_head_dim), 28));
  s = ReadLlama2cCheckpoint(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(s.message(), "inconsistent llama2.c header"));

  // A tied header over an untied file's weights: one classifier too many.
  testing::WriteAll(path, Header(kVocab) + Weights(/*shared=*/false));
  s = ReadLlama2cCheckpoint(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  const std::string expected = std::to_string(28 + Weights(/*shared=*/true).size());
  EXPECT_TRUE(Contains(s.message(), "has " + expected)) << s;
  EXPECT_TRUE(Contains(s.message(), path));
}

// ---- versions 1 and 2 ----------------------------------------------------------------------

// The 256-byte header of export.py's version 1 or 2.
std::string VersionedHeader(int32_t version, bool shared, int32_t group_size,
                            int32_t vocab = kVocab) {
  std::string h(256, '\0');
  const uint32_t magic = 0x616b3432;
  const int32_t fields[7] = {kDim, kHidden, kLayers, kHeads, kKvHeads, vocab, kSeqLen};
  std::memcpy(&h[0], &magic, 4);
  std::memcpy(&h[4], &version, 4);
  std::memcpy(&h[8], fields, sizeof(fields));
  h[36] = shared ? 1 : 0;
  if (version == 2) std::memcpy(&h[37], &group_size, 4);
  return h;
}

// Floats of every tensor a layer has, by kind, and of the norms.
constexpr int64_t kNormFloats = 2 * kLayers * kDim + kDim;
constexpr int64_t kEmbeddingFloats = int64_t{kVocab} * kDim;

TEST_F(Llama2cReaderTest, ReadsVersion1InExportPyOrder) {
  // Norms (attention, ffn, final), embeddings, wq, wk, wv, wo, w1, w2, w3 of every layer, then
  // the classifier: every float its own index, as above.
  const int64_t matrices = kLayers * (kLayerFloats - 2 * kDim);
  const std::string path = Path("v1.bin");
  testing::WriteAll(path, VersionedHeader(1, /*shared=*/false, 0) +
                              Floats(kNormFloats + 2 * kEmbeddingFloats + matrices, 0.0f));
  absl::StatusOr<Llama2cCheckpoint> ckpt = ReadLlama2cCheckpoint(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->header.version, 1);
  EXPECT_FALSE(ckpt->header.shared_classifier);
  EXPECT_EQ(ckpt->header.vocab_size, kVocab);
  const TensorMap& w = ckpt->weights;
  EXPECT_EQ(FirstFloat(w.at("layers.0.attention_norm.weight")), 0.0f);
  EXPECT_EQ(FirstFloat(w.at("layers.1.attention_norm.weight")), kDim);
  EXPECT_EQ(FirstFloat(w.at("layers.0.ffn_norm.weight")), 2 * kDim);
  EXPECT_EQ(FirstFloat(w.at("norm.weight")), 4 * kDim);
  EXPECT_EQ(FirstFloat(w.at("tok_embeddings.weight")), kNormFloats);
  EXPECT_EQ(FirstFloat(w.at("layers.0.attention.wq.weight")), kNormFloats + kEmbeddingFloats);
  EXPECT_EQ(FirstFloat(w.at("layers.1.attention.wq.weight")),
            kNormFloats + kEmbeddingFloats + kDim * kDim);
  EXPECT_EQ(FirstFloat(w.at("output.weight")), kNormFloats + kEmbeddingFloats + matrices);
}

// export.py's quantize_q80 of one group, written out: scale = max|w| / 127, q = round-half-even.
TEST(Llama2cWriterTest, Version2QuantizesLikeExportPy) {
  Llama2cCheckpoint ckpt;
  ckpt.header = {kDim, kHidden, kLayers, kHeads, kKvHeads, kVocab, kSeqLen, true, 2, kDim};
  // Every tensor: 1..n scaled; the embedding's first group (of 8) is chosen by hand.
  const Llama2cHeader& h = ckpt.header;
  auto fill = [&](const std::string& name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(n);
    for (int64_t i = 0; i < n; ++i) v[i] = 0.01f * static_cast<float>(i % 97) - 0.3f;
    ckpt.weights[name] = TensorData::F32(shape, v.data());
  };
  fill("tok_embeddings.weight", {h.vocab_size, h.dim});
  fill("norm.weight", {h.dim});
  for (int l = 0; l < h.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    fill(p + "attention_norm.weight", {kDim});
    fill(p + "ffn_norm.weight", {kDim});
    fill(p + "attention.wq.weight", {kDim, kDim});
    fill(p + "attention.wk.weight", {kKvDim, kDim});
    fill(p + "attention.wv.weight", {kKvDim, kDim});
    fill(p + "attention.wo.weight", {kDim, kDim});
    fill(p + "feed_forward.w1.weight", {kHidden, kDim});
    fill(p + "feed_forward.w2.weight", {kDim, kHidden});
    fill(p + "feed_forward.w3.weight", {kHidden, kDim});
  }
  const float group[8] = {127.0f, 2.5f, -3.5f, 0.49f, -127.0f, 1.5f, 0.0f, -0.5f};
  std::memcpy(&ckpt.weights["tok_embeddings.weight"].bytes[0], group, sizeof(group));
  absl::StatusOr<std::string> bytes = SerializeLlama2cCheckpoint(ckpt);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  // The embedding's int8 values follow the header and the float32 norms; scale 127 / 127 = 1.
  const size_t at = 256 + kNormFloats * sizeof(float);
  const int8_t want[8] = {127, 2, -4, 0, -127, 2, 0, 0};  // half to even: 2.5 -> 2, -3.5 -> -4
  for (int i = 0; i < 8; ++i) EXPECT_EQ(static_cast<int8_t>((*bytes)[at + i]), want[i]) << i;
  float scale;
  std::memcpy(&scale, bytes->data() + at + kEmbeddingFloats, sizeof(scale));
  EXPECT_EQ(scale, 1.0f);

  // Read back: each value is q * scale, within half a step of what was written.
  const std::string path = ::testing::TempDir() + "/q8.bin";
  testing::WriteAll(path, *bytes);
  absl::StatusOr<Llama2cCheckpoint> read = ReadLlama2cCheckpoint(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->header.version, 2);
  EXPECT_EQ(read->header.group_size, kDim);
  EXPECT_EQ(FirstFloat(read->weights.at("tok_embeddings.weight")), 127.0f);
  for (const auto& [name, t] : ckpt.weights) {
    const TensorData& r = read->weights.at(name);
    ASSERT_EQ(r.shape, t.shape) << name;
    const float* a = reinterpret_cast<const float*>(t.bytes.data());
    const float* b = reinterpret_cast<const float*>(r.bytes.data());
    const bool norm = t.shape.size() == 1;  // kept in float32
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (norm) {
        ASSERT_EQ(a[i], b[i]) << name << "[" << i << "]";
      } else {
        // Half a step: max|w| <= 0.66 per group, so scale <= 0.0052.
        ASSERT_NEAR(a[i], b[i], name == "tok_embeddings.weight" && i < 8 ? 0.5f : 0.0027f)
            << name << "[" << i << "]";
      }
    }
  }
}

TEST(Llama2cWriterTest, EveryVersionReadsBackAndLegacyWritesRopeTables) {
  const std::string path = ::testing::TempDir() + "/round_trip.bin";
  testing::WriteAll(path, Header(-kVocab) + Weights(/*shared=*/false));
  absl::StatusOr<Llama2cCheckpoint> original = ReadLlama2cCheckpoint(path);
  ASSERT_TRUE(original.ok()) << original.status();
  for (int version : {0, 1}) {
    Llama2cCheckpoint ckpt = *original;
    ckpt.header.version = version;
    absl::StatusOr<std::string> bytes = SerializeLlama2cCheckpoint(ckpt);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    testing::WriteAll(path, *bytes);
    absl::StatusOr<Llama2cCheckpoint> read = ReadLlama2cCheckpoint(path);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->header.version, version);
    EXPECT_FALSE(read->header.shared_classifier);
    ASSERT_EQ(read->weights.size(), original->weights.size());
    for (const auto& [name, t] : original->weights) {
      EXPECT_EQ(read->weights.at(name).bytes, t.bytes) << name << " version " << version;
    }
    if (version == 0) {
      // The header as run.c reads it (vocab negated: untied), and the RoPE tables at their
      // place: cos then sin of pos * 10000^(-2i/head_dim).
      EXPECT_EQ(bytes->substr(0, 28), Header(-kVocab));
      const size_t tables = 28 + (kEmbeddingFloats + kLayers * kLayerFloats + kDim) * 4;
      auto table = [&](int which, int pos, int i) {
        float v;
        std::memcpy(&v, bytes->data() + tables + 4 * ((which * kSeqLen + pos) * kHeadDim / 2 + i),
                    4);
        return v;
      };
      EXPECT_EQ(table(0, 0, 0), 1.0f);
      EXPECT_EQ(table(1, 0, 1), 0.0f);
      EXPECT_FLOAT_EQ(table(0, 2, 0), std::cos(2.0f));
      EXPECT_FLOAT_EQ(table(1, 2, 1), std::sin(2.0f / 100.0f));  // head_dim 4: 10000^(-1/2)
    }
  }
}

TEST(Llama2cWriterTest, RefusesWhatItCannotWrite) {
  Llama2cCheckpoint ckpt;
  ckpt.header = {kDim, kHidden, kLayers, kHeads, kKvHeads, kVocab, kSeqLen, true, 0, 0};
  absl::Status s = SerializeLlama2cCheckpoint(ckpt).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "no tok_embeddings.weight")) << s;
  ckpt.weights["tok_embeddings.weight"] = TensorData{DType::kF16, {kVocab, kDim},
                                                     std::string(kVocab * kDim * 2, '\0')};
  s = SerializeLlama2cCheckpoint(ckpt).status();
  EXPECT_TRUE(Contains(s.message(), "tok_embeddings.weight is F16 [10, 8], expected F32 [10, 8]"))
      << s;
  ckpt.header.version = 2;
  ckpt.header.group_size = 3;  // does not divide dim 8
  EXPECT_TRUE(Contains(SerializeLlama2cCheckpoint(ckpt).status().message(), "group_size")) << s;
  ckpt.header.version = 3;
  EXPECT_EQ(SerializeLlama2cCheckpoint(ckpt).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(Llama2cReaderTest, RejectsBadVersionedFiles) {
  const std::string path = Path("bad_versioned.bin");
  testing::WriteAll(path, VersionedHeader(3, true, 0));
  absl::Status s = ReadLlama2cCheckpoint(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "version 3 is not supported")) << s;

  testing::WriteAll(path, VersionedHeader(1, true, 0).substr(0, 100));
  s = ReadLlama2cCheckpoint(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(s.message(), "256-byte header")) << s;

  testing::WriteAll(path, VersionedHeader(2, true, 3));  // 3 does not divide dim 8
  s = ReadLlama2cCheckpoint(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(s.message(), "inconsistent llama2.c header")) << s;
  EXPECT_TRUE(Contains(s.message(), "group_size 3")) << s;

  testing::WriteAll(path, VersionedHeader(1, true, 0, -kVocab));  // versioned vocab is positive
  s = ReadLlama2cCheckpoint(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(s.message(), "implausible")) << s;

  testing::WriteAll(path, VersionedHeader(1, true, 0) + Floats(kNormFloats, 0.0f));  // truncated
  s = ReadLlama2cCheckpoint(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(s.message(), "(version 1, shared_classifier 1)")) << s;
}

}  // namespace
}  // namespace tandem

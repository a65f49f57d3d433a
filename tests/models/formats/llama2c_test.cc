// The llama2.c checkpoint reader (models/formats/llama2c.h) on hand-made files: run.c's layout
// under tandem's names, and the validation of the header and the file size. The real
// stories260K checkpoint through the model is tests/models/llama/llama2c_test.cc.
#include "models/formats/llama2c.h"

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

}  // namespace
}  // namespace tandem

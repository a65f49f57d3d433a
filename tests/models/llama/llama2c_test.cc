// The real pretrained llama2.c model (stories260K) through ReadLlama2cCheckpoint (models/formats)
// and the LibTorch model, against the plain C++ reference of llama2.c's run.c forward()
// (tests/testing/base/run_c_reference.h) reading the same file on its own.
// Agreement proves the architecture: interleaved rotary pairs, grouped-query attention (kv_mul),
// SwiGLU, RMSNorm and the checkpoint layout.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/formats/llama2c.h"
#include "models/llama2c_model.h"
#include "models/llama/llama.h"
#include "models/llama/llama_config.h"
#include "models/text_model.h"
#include "tests/testing/base/files.h"
#include "tests/testing/base/run_c_reference.h"
#include "tests/testing/base/tiny_configs.h"

namespace tandem {
namespace {

const char kStories260K[] = TANDEM_SOURCE_DIR "/../shared/models/stories260K.bin";

using testing::ReadAll;
using testing::WriteAll;

using testing::RunCTransformer;

// The checkpoint's weights, and its header as a LlamaConfig in *config.
absl::StatusOr<TensorMap> ReadLlama2c(const std::string& path, LlamaConfig* config) {
  absl::StatusOr<Llama2cCheckpoint> ckpt = ReadLlama2cCheckpoint(path);
  if (!ckpt.ok()) return ckpt.status();
  absl::StatusOr<LlamaConfig> c = LlamaConfigFromLlama2c(ckpt->header);
  if (!c.ok()) return c.status();
  *config = *c;
  return std::move(ckpt->weights);
}

int Argmax(const float* v, int n) { return static_cast<int>(std::max_element(v, v + n) - v); }

float MaxAbsDiff(const float* a, const float* b, int n) {
  float m = 0;
  for (int i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

class Stories260KTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::ifstream(kStories260K).good()) GTEST_SKIP() << "no " << kStories260K;
    absl::StatusOr<TensorMap> weights = ReadLlama2c(kStories260K, &config_);
    ASSERT_TRUE(weights.ok()) << weights.status();
    TextModelOptions options;
    options.max_slots = 2;
    absl::StatusOr<std::unique_ptr<TextModel>> model = CreateLlamaModel(config_, *weights, options);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    ref_ = std::make_unique<RunCTransformer>(kStories260K);
  }

  LlamaConfig config_;
  std::unique_ptr<TextModel> model_;
  std::unique_ptr<RunCTransformer> ref_;
};

TEST_F(Stories260KTest, ConfigFromHeader) {
  EXPECT_EQ(config_.dim, 64);
  EXPECT_EQ(config_.hidden_dim, 172);
  EXPECT_EQ(config_.n_layers, 5);
  EXPECT_EQ(config_.n_heads, 8);
  EXPECT_EQ(config_.n_kv_heads, 4);
  EXPECT_EQ(config_.vocab_size, 512);
  EXPECT_EQ(config_.seq_len, 512);
  EXPECT_TRUE(config_.tie_embeddings);
  EXPECT_EQ(config_.bos_id, 1);
  EXPECT_EQ(config_.eos_id, 1);  // run.c stops at BOS
  EXPECT_FLOAT_EQ(config_.norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(config_.rope_theta, 10000.0f);
  // 260K parameters, counted from the weights.
  EXPECT_EQ(model_->parameter_count(), 260032);
  EXPECT_EQ(model_->parameter_count(),
            512 * 64 + 5 * (2 * 64 + 2 * 64 * 64 + 2 * 32 * 64 + 3 * 172 * 64) + 64);
}

TEST_F(Stories260KTest, LogitsMatchRunC) {
  const int vocab = config_.vocab_size;
  const std::vector<int32_t> tokens = {1,   403, 407, 261, 378, 300, 365, 267, 423, 280, 289, 350,
                                       402, 260, 427, 263, 500, 301, 33,  95,  110, 77,  270, 417};
  std::vector<float> full;
  ASSERT_TRUE(model_->Forward(tokens, &full).ok());
  absl::StatusOr<int> slot = model_->AcquireSlot();
  ASSERT_TRUE(slot.ok());
  std::vector<float> step(vocab);
  ASSERT_TRUE(model_->Prefill(*slot, absl::MakeConstSpan(tokens).subspan(0, 1), step.data()).ok());
  float worst_forward = 0, worst_decode = 0, largest = 0;
  for (size_t pos = 0; pos < tokens.size(); ++pos) {
    const std::vector<float>& want = ref_->Forward(tokens[pos], static_cast<int>(pos));
    if (pos > 0) {
      const int s = *slot;
      ASSERT_TRUE(model_->Decode({&s, 1}, {&tokens[pos], 1}, step.data()).ok());
    }
    worst_forward = std::max(worst_forward, MaxAbsDiff(&full[pos * vocab], want.data(), vocab));
    worst_decode = std::max(worst_decode, MaxAbsDiff(step.data(), want.data(), vocab));
    for (float v : want) largest = std::max(largest, std::fabs(v));
  }
  RecordProperty("max_abs_diff_forward", std::to_string(worst_forward));
  RecordProperty("max_abs_diff_decode", std::to_string(worst_decode));
  EXPECT_GT(largest, 1.0f);  // real logits, not a degenerate model
  EXPECT_LE(worst_forward, 1e-4f);
  EXPECT_LE(worst_decode, 1e-4f);
}

TEST_F(Stories260KTest, GreedyGenerationMatchesRunC) {
  const int vocab = config_.vocab_size;
  std::vector<int> ref_ids, ids;
  int token = config_.bos_id;
  for (int pos = 0; pos < 20; ++pos) {
    token = Argmax(ref_->Forward(token, pos).data(), vocab);
    ref_ids.push_back(token);
  }
  absl::StatusOr<int> slot = model_->AcquireSlot();
  ASSERT_TRUE(slot.ok());
  std::vector<float> logits(vocab);
  const std::vector<int32_t> bos = {config_.bos_id};
  ASSERT_TRUE(model_->Prefill(*slot, bos, logits.data()).ok());
  for (int pos = 0; pos < 20; ++pos) {
    const int32_t next = Argmax(logits.data(), vocab);
    ids.push_back(next);
    if (pos + 1 < 20) {
      const int s = *slot;
      ASSERT_TRUE(model_->Decode({&s, 1}, {&next, 1}, logits.data()).ok());
    }
  }
  EXPECT_EQ(ids, ref_ids);
  // A story, not one token over and over.
  EXPECT_GT(std::set<int>(ids.begin(), ids.end()).size(), 5u);
}

TEST(Llama2cCheckpointTest, TruncatedFileIsDataLoss) {
  if (!std::ifstream(kStories260K).good()) GTEST_SKIP() << "no " << kStories260K;
  std::string bytes = ReadAll(kStories260K);
  const std::string path = ::testing::TempDir() + "/truncated_stories.bin";
  WriteAll(path, bytes.substr(0, bytes.size() - 4));
  LlamaConfig config;
  absl::StatusOr<TensorMap> weights = ReadLlama2c(path, &config);
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kDataLoss) << weights.status();
  WriteAll(path, bytes + std::string(4, '\0'));  // one float too many
  EXPECT_EQ(ReadLlama2c(path, &config).status().code(), absl::StatusCode::kDataLoss);
  WriteAll(path, bytes.substr(0, 10));  // not even a header
  EXPECT_EQ(ReadLlama2c(path, &config).status().code(), absl::StatusCode::kDataLoss);
  std::remove(path.c_str());
  EXPECT_EQ(ReadLlama2c(path, &config).status().code(), absl::StatusCode::kNotFound);
}

// An untied checkpoint (negative vocab_size, wcls after the freq_cis tables) written by hand in
// run.c's layout reads back tensor for tensor.
TEST(Llama2cCheckpointTest, UntiedClassifierRoundTrip) {
  LlamaConfig config = testing::LlamaShape({/*dim=*/16, /*layers=*/2, /*heads=*/4,
                                            /*kv_heads=*/2, /*seq_len=*/8, /*vocab=*/32});
  config.hidden_dim = 40;
  config.tie_embeddings = false;
  ASSERT_TRUE(config.Normalize().ok());
  const TensorMap weights = *RandomLlamaWeights(config, 5);
  const int32_t header[7] = {16, 40, 2, 4, 2, -32, 8};
  std::string bytes(reinterpret_cast<const char*>(header), sizeof(header));
  auto put = [&](const std::string& name) { bytes += weights.at(name).bytes; };
  auto put_layers = [&](const char* suffix) {
    for (int l = 0; l < 2; ++l) put("layers." + std::to_string(l) + "." + suffix);
  };
  put("tok_embeddings.weight");
  put_layers("attention_norm.weight");
  put_layers("attention.wq.weight");
  put_layers("attention.wk.weight");
  put_layers("attention.wv.weight");
  put_layers("attention.wo.weight");
  put_layers("ffn_norm.weight");
  put_layers("feed_forward.w1.weight");
  put_layers("feed_forward.w2.weight");
  put_layers("feed_forward.w3.weight");
  put("norm.weight");
  bytes += std::string(2 * 8 * 4 / 2 * sizeof(float), '\x7f');  // freq_cis_real, freq_cis_imag
  put("output.weight");
  const std::string path = ::testing::TempDir() + "/untied_llama2c.bin";
  WriteAll(path, bytes);
  LlamaConfig read_config;
  absl::StatusOr<TensorMap> read = ReadLlama2c(path, &read_config);
  std::remove(path.c_str());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_FALSE(read_config.tie_embeddings);
  EXPECT_EQ(read_config.vocab_size, 32);
  EXPECT_EQ(read_config.hidden_dim, 40);
  ASSERT_EQ(read->size(), weights.size());
  for (const auto& [name, t] : weights) {
    ASSERT_EQ(read->count(name), 1u) << name;
    EXPECT_EQ(read->at(name).shape, t.shape) << name;
    EXPECT_EQ(read->at(name).bytes, t.bytes) << name;
  }
}

}  // namespace
}  // namespace tandem

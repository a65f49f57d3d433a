// The real pretrained llama2.c model (stories260K) through ReadLlama2cCheckpoint (models/formats)
// and the LibTorch model, against a plain C++ port of llama2.c's run.c forward() reading the same
// file on its own.
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
#include "models/llama/llama.h"
#include "models/llama/llama_config.h"
#include "models/text_model.h"
#include "tests/testing/base/files.h"
#include "tests/testing/base/tiny_configs.h"

namespace tandem {
namespace {

const char kStories260K[] = TANDEM_SOURCE_DIR "/../shared/models/stories260K.bin";

using testing::ReadAll;
using testing::WriteAll;

// ---- reference: llama2.c run.c, ported line by line (float32, one token at a time) ----------

struct RefConfig {
  int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

class RunC {
 public:
  explicit RunC(const std::string& path) {
    std::string bytes = ReadAll(path);
    std::memcpy(&p_, bytes.data(), sizeof(p_));
    const bool shared_weights = p_.vocab_size > 0;
    p_.vocab_size = std::abs(p_.vocab_size);
    data_.resize((bytes.size() - sizeof(p_)) / sizeof(float));
    std::memcpy(data_.data(), bytes.data() + sizeof(p_), data_.size() * sizeof(float));
    // memory_map_weights
    const int head_size = p_.dim / p_.n_heads;
    const uint64_t n_layers = p_.n_layers;
    float* ptr = data_.data();
    token_embedding_table_ = ptr;
    ptr += p_.vocab_size * p_.dim;
    rms_att_weight_ = ptr;
    ptr += n_layers * p_.dim;
    wq_ = ptr;
    ptr += n_layers * p_.dim * (p_.n_heads * head_size);
    wk_ = ptr;
    ptr += n_layers * p_.dim * (p_.n_kv_heads * head_size);
    wv_ = ptr;
    ptr += n_layers * p_.dim * (p_.n_kv_heads * head_size);
    wo_ = ptr;
    ptr += n_layers * (p_.n_heads * head_size) * p_.dim;
    rms_ffn_weight_ = ptr;
    ptr += n_layers * p_.dim;
    w1_ = ptr;
    ptr += n_layers * p_.dim * p_.hidden_dim;
    w2_ = ptr;
    ptr += n_layers * p_.hidden_dim * p_.dim;
    w3_ = ptr;
    ptr += n_layers * p_.dim * p_.hidden_dim;
    rms_final_weight_ = ptr;
    ptr += p_.dim;
    ptr += p_.seq_len * head_size / 2;  // freq_cis_real
    ptr += p_.seq_len * head_size / 2;  // freq_cis_imag
    wcls_ = shared_weights ? token_embedding_table_ : ptr;
    // malloc_run_state
    const int kv_dim = (p_.dim * p_.n_kv_heads) / p_.n_heads;
    x_.resize(p_.dim);
    xb_.resize(p_.dim);
    xb2_.resize(p_.dim);
    hb_.resize(p_.hidden_dim);
    hb2_.resize(p_.hidden_dim);
    q_.resize(p_.dim);
    key_cache_.resize(n_layers * p_.seq_len * kv_dim);
    value_cache_.resize(n_layers * p_.seq_len * kv_dim);
    att_.resize(p_.n_heads * p_.seq_len);
    logits_.resize(p_.vocab_size);
  }

  const RefConfig& config() const { return p_; }

  static void rmsnorm(float* o, const float* x, const float* weight, int size) {
    float ss = 0.0f;
    for (int j = 0; j < size; j++) ss += x[j] * x[j];
    ss /= size;
    ss += 1e-5f;
    ss = 1.0f / sqrtf(ss);
    for (int j = 0; j < size; j++) o[j] = weight[j] * (ss * x[j]);
  }

  static void softmax(float* x, int size) {
    float max_val = x[0];
    for (int i = 1; i < size; i++) max_val = std::max(max_val, x[i]);
    float sum = 0.0f;
    for (int i = 0; i < size; i++) {
      x[i] = expf(x[i] - max_val);
      sum += x[i];
    }
    for (int i = 0; i < size; i++) x[i] /= sum;
  }

  // W (d,n) @ x (n,) -> xout (d,)
  static void matmul(float* xout, const float* x, const float* w, int n, int d) {
    for (int i = 0; i < d; i++) {
      float val = 0.0f;
      for (int j = 0; j < n; j++) val += w[i * n + j] * x[j];
      xout[i] = val;
    }
  }

  const std::vector<float>& forward(int token, int pos) {
    const RefConfig* p = &p_;
    float* x = x_.data();
    const int dim = p->dim;
    const int kv_dim = (p->dim * p->n_kv_heads) / p->n_heads;
    const int kv_mul = p->n_heads / p->n_kv_heads;
    const int hidden_dim = p->hidden_dim;
    const int head_size = dim / p->n_heads;
    std::memcpy(x, token_embedding_table_ + token * dim, dim * sizeof(*x));
    for (uint64_t l = 0; l < static_cast<uint64_t>(p->n_layers); l++) {
      rmsnorm(xb_.data(), x, rms_att_weight_ + l * dim, dim);
      const int loff = l * p->seq_len * kv_dim;
      float* k = key_cache_.data() + loff + pos * kv_dim;
      float* v = value_cache_.data() + loff + pos * kv_dim;
      matmul(q_.data(), xb_.data(), wq_ + l * dim * dim, dim, dim);
      matmul(k, xb_.data(), wk_ + l * dim * kv_dim, dim, kv_dim);
      matmul(v, xb_.data(), wv_ + l * dim * kv_dim, dim, kv_dim);
      // RoPE relative positional encoding: complex-valued rotate q and k in each head
      for (int i = 0; i < dim; i += 2) {
        const int head_dim = i % head_size;
        const float freq = 1.0f / powf(10000.0f, head_dim / (float)head_size);
        const float val = pos * freq;
        const float fcr = cosf(val);
        const float fci = sinf(val);
        const int rotn = i < kv_dim ? 2 : 1;
        for (int r = 0; r < rotn; r++) {
          float* vec = r == 0 ? q_.data() : k;
          const float v0 = vec[i];
          const float v1 = vec[i + 1];
          vec[i] = v0 * fcr - v1 * fci;
          vec[i + 1] = v0 * fci + v1 * fcr;
        }
      }
      // multihead attention
      for (int h = 0; h < p->n_heads; h++) {
        const float* q = q_.data() + h * head_size;
        float* att = att_.data() + h * p->seq_len;
        for (int t = 0; t <= pos; t++) {
          const float* kt = key_cache_.data() + loff + t * kv_dim + (h / kv_mul) * head_size;
          float score = 0.0f;
          for (int i = 0; i < head_size; i++) score += q[i] * kt[i];
          score /= sqrtf(head_size);
          att[t] = score;
        }
        softmax(att, pos + 1);
        float* xb = xb_.data() + h * head_size;
        std::memset(xb, 0, head_size * sizeof(float));
        for (int t = 0; t <= pos; t++) {
          const float* vt = value_cache_.data() + loff + t * kv_dim + (h / kv_mul) * head_size;
          const float a = att[t];
          for (int i = 0; i < head_size; i++) xb[i] += a * vt[i];
        }
      }
      matmul(xb2_.data(), xb_.data(), wo_ + l * dim * dim, dim, dim);
      for (int i = 0; i < dim; i++) x[i] += xb2_[i];
      rmsnorm(xb_.data(), x, rms_ffn_weight_ + l * dim, dim);
      matmul(hb_.data(), xb_.data(), w1_ + l * dim * hidden_dim, dim, hidden_dim);
      matmul(hb2_.data(), xb_.data(), w3_ + l * dim * hidden_dim, dim, hidden_dim);
      // SwiGLU non-linearity
      for (int i = 0; i < hidden_dim; i++) {
        float val = hb_[i];
        val *= (1.0f / (1.0f + expf(-val)));
        val *= hb2_[i];
        hb_[i] = val;
      }
      matmul(xb_.data(), hb_.data(), w2_ + l * dim * hidden_dim, hidden_dim, dim);
      for (int i = 0; i < dim; i++) x[i] += xb_[i];
    }
    rmsnorm(x, x, rms_final_weight_, dim);
    matmul(logits_.data(), x, wcls_, p->dim, p->vocab_size);
    return logits_;
  }

 private:
  RefConfig p_;
  std::vector<float> data_;
  float *token_embedding_table_, *rms_att_weight_, *wq_, *wk_, *wv_, *wo_, *rms_ffn_weight_, *w1_,
      *w2_, *w3_, *rms_final_weight_, *wcls_;
  std::vector<float> x_, xb_, xb2_, hb_, hb2_, q_, key_cache_, value_cache_, att_, logits_;
};

// The model a llama2.c header describes: its sizes, and llama2.c's fixed norm_eps, rope_theta,
// BOS and EOS.
absl::StatusOr<LlamaConfig> ConfigFromHeader(const Llama2cHeader& h) {
  LlamaConfig c;
  c.dim = h.dim;
  c.hidden_dim = h.hidden_dim;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  c.vocab_size = h.vocab_size;
  c.seq_len = h.seq_len;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.tie_embeddings = h.shared_classifier;
  c.bos_id = 1;
  c.eos_id = 2;
  if (absl::Status s = c.Normalize(); !s.ok()) return s;
  return c;
}

// The checkpoint's weights, and its header as a LlamaConfig in *config.
absl::StatusOr<TensorMap> ReadLlama2c(const std::string& path, LlamaConfig* config) {
  absl::StatusOr<Llama2cCheckpoint> ckpt = ReadLlama2cCheckpoint(path);
  if (!ckpt.ok()) return ckpt.status();
  absl::StatusOr<LlamaConfig> c = ConfigFromHeader(ckpt->header);
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
    ref_ = std::make_unique<RunC>(kStories260K);
  }

  LlamaConfig config_;
  std::unique_ptr<TextModel> model_;
  std::unique_ptr<RunC> ref_;
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
  EXPECT_EQ(config_.eos_id, 2);
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
    const std::vector<float>& want = ref_->forward(tokens[pos], static_cast<int>(pos));
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
    token = Argmax(ref_->forward(token, pos).data(), vocab);
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

// The LibTorch Llama model against itself: the KV-cache paths (Prefill, chunked Prefill, Decode,
// batched Decode over dense rows, holes and subsets) must reproduce the cache-free Forward and
// solo decoding; plus weight validation, slot accounting and RandomLlamaWeights.
#include "models/llama/llama.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/torch/device.h"
#include "models/llama/llama_config.h"
#include "models/text_model.h"

namespace tandem {
namespace {

constexpr float kTolerance = 1e-5f;

// The decode paths on the CPU (see ChooseDecodePath in llama.cc): the machine's widest loops
// (""), the 8- and 4-lane loops (steps of fewer than 4 rows run without ATen, larger ones attend
// in the loops), and ATen throughout (the CUDA path).
const char* const kAttentionPaths[] = {"", "vec8", "vec4", "aten"};

// Sets TANDEM_DECODE_ATTENTION for one scope.
class ScopedAttentionPath {
 public:
  explicit ScopedAttentionPath(const std::string& path) {
    if (path.empty()) {
      unsetenv("TANDEM_DECODE_ATTENTION");
    } else {
      setenv("TANDEM_DECODE_ATTENTION", path.c_str(), 1);
    }
  }
  ~ScopedAttentionPath() { unsetenv("TANDEM_DECODE_ATTENTION"); }
};

LlamaConfig TinyConfig(bool tied, int dim = 48, int seq_len = 64) {
  LlamaConfig c;
  c.dim = dim;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 64;
  c.seq_len = seq_len;
  c.tie_embeddings = tied;
  EXPECT_TRUE(c.Normalize().ok());
  return c;
}

// Multiplies every matrix of a float32 map by `factor`: std 0.02 weights give near-uniform
// attention, which would hide position bugs; sharper ones make every position matter.
void ScaleMatrices(TensorMap* weights, float factor) {
  for (auto& [name, t] : *weights) {
    if (t.shape.size() != 2) continue;
    float* p = reinterpret_cast<float*>(t.bytes.data());
    for (size_t i = 0; i < t.bytes.size() / sizeof(float); ++i) p[i] *= factor;
  }
}

std::unique_ptr<TextModel> MakeModel(const LlamaConfig& config, uint64_t seed, int max_slots,
                                     const std::string& device = "cpu") {
  absl::StatusOr<TensorMap> weights = RandomLlamaWeights(config, seed);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return nullptr;
  ScaleMatrices(&*weights, 8.0f);
  TextModelOptions options;
  options.device = device;
  options.max_slots = max_slots;
  absl::StatusOr<std::unique_ptr<TextModel>> model = CreateLlamaModel(config, *weights, options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

std::vector<int32_t> Tokens(int n, uint32_t seed, int vocab) {
  std::vector<int32_t> out(n);
  uint32_t s = seed * 2654435761u + 12345u;
  for (int& t : out) {
    s = s * 1664525u + 1013904223u;
    t = static_cast<int32_t>((s >> 8) % vocab);
  }
  return out;
}

float MaxAbsDiff(const float* a, const float* b, int n) {
  float m = 0;
  for (int i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

float MaxAbs(const std::vector<float>& a) {
  float m = 0;
  for (float v : a) m = std::max(m, std::fabs(v));
  return m;
}

// Prefill of a prompt, then Decode token by token, equals Forward at every position, over a
// context of 150 (head_dim 12: whole vectors and a remainder in the CPU loops).
void CheckDecodeMatchesForward(const std::string& device, bool tied) {
  const LlamaConfig config = TinyConfig(tied, 48, 150);
  std::unique_ptr<TextModel> model = MakeModel(config, 7, /*max_slots=*/3, device);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->device(), device);
  const int vocab = config.vocab_size;
  const int prompt = 9;
  const std::vector<int32_t> tokens = Tokens(config.seq_len, 1, vocab);  // fills the context

  std::vector<float> full;
  ASSERT_TRUE(model->Forward(tokens, &full).ok());
  ASSERT_EQ(full.size(), tokens.size() * vocab);
  // Logits of order 1 or more: a tolerance of 1e-5 is meaningful.
  EXPECT_GT(MaxAbs(full), 0.5f);

  // Occupy another slot first so the sequence does not live in physical row 0.
  absl::StatusOr<int> other = model->AcquireSlot();
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(model->Prefill(*other, Tokens(5, 99, vocab), std::vector<float>(vocab).data()).ok());
  absl::StatusOr<int> slot = model->AcquireSlot();
  ASSERT_TRUE(slot.ok());
  std::vector<float> logits(vocab);
  ASSERT_TRUE(
      model->Prefill(*slot, absl::MakeConstSpan(tokens).subspan(0, prompt), logits.data()).ok());
  EXPECT_EQ(model->SlotLength(*slot), prompt);
  float worst = MaxAbsDiff(logits.data(), &full[(prompt - 1) * vocab], vocab);
  for (int pos = prompt; pos < config.seq_len; ++pos) {
    const int s = *slot;
    ASSERT_TRUE(model->Decode({&s, 1}, {&tokens[pos], 1}, logits.data()).ok()) << pos;
    worst = std::max(worst, MaxAbsDiff(logits.data(), &full[pos * vocab], vocab));
  }
  EXPECT_EQ(model->SlotLength(*slot), config.seq_len);
  EXPECT_LE(worst, kTolerance) << "largest logit " << MaxAbs(full);
  ::testing::Test::RecordProperty("max_abs_diff", std::to_string(worst));
}

TEST(LlamaModelTest, DecodeMatchesForwardTied) {
  for (const char* path : kAttentionPaths) {
    SCOPED_TRACE(path);
    ScopedAttentionPath scoped(path);
    CheckDecodeMatchesForward("cpu", true);
  }
}

TEST(LlamaModelTest, DecodeMatchesForwardUntied) {
  for (const char* path : kAttentionPaths) {
    SCOPED_TRACE(path);
    ScopedAttentionPath scoped(path);
    CheckDecodeMatchesForward("cpu", false);
  }
}

TEST(LlamaModelTest, DecodeMatchesForward_CUDA) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckDecodeMatchesForward("cuda:0", false);
}

TEST(LlamaModelTest, ChunkedPrefillEqualsOnePrefill) {
  const LlamaConfig config = TinyConfig(false, 32);
  std::unique_ptr<TextModel> model = MakeModel(config, 3, 2);
  ASSERT_NE(model, nullptr);
  const int vocab = config.vocab_size;
  const std::vector<int32_t> tokens = Tokens(30, 5, vocab);
  absl::StatusOr<int> whole = model->AcquireSlot();
  absl::StatusOr<int> chunked = model->AcquireSlot();
  ASSERT_TRUE(whole.ok() && chunked.ok());
  std::vector<float> a(vocab), b(vocab);
  const auto span = absl::MakeConstSpan(tokens);
  ASSERT_TRUE(model->Prefill(*whole, span.subspan(0, 25), a.data()).ok());
  ASSERT_TRUE(model->Prefill(*chunked, span.subspan(0, 11), b.data()).ok());
  ASSERT_TRUE(model->Prefill(*chunked, span.subspan(11, 14), b.data()).ok());
  EXPECT_EQ(model->SlotLength(*chunked), 25);
  EXPECT_LE(MaxAbsDiff(a.data(), b.data(), vocab), kTolerance);
  // And the caches agree: the following decode steps match too.
  for (int pos = 25; pos < 30; ++pos) {
    const int s1 = *whole, s2 = *chunked;
    ASSERT_TRUE(model->Decode({&s1, 1}, {&tokens[pos], 1}, a.data()).ok());
    ASSERT_TRUE(model->Decode({&s2, 1}, {&tokens[pos], 1}, b.data()).ok());
    EXPECT_LE(MaxAbsDiff(a.data(), b.data(), vocab), kTolerance) << pos;
  }
}

// One sequence of the batched test: its tokens, and the logits decoding it alone gives after
// each of its tokens (from the end of the prompt on).
struct Sequence {
  std::vector<int32_t> tokens;
  int prompt = 0;
  std::vector<std::vector<float>> solo;  // solo[i]: logits after tokens[prompt - 1 + i]
  int slot = -1;
  int consumed = 0;  // tokens given to the batched model so far
};

Sequence MakeSequence(TextModel* solo_model, int prompt, int total, uint32_t seed) {
  const int vocab = solo_model->config().vocab_size;
  Sequence s;
  s.tokens = Tokens(total, seed, vocab);
  s.prompt = prompt;
  absl::StatusOr<int> slot = solo_model->AcquireSlot();
  EXPECT_TRUE(slot.ok());
  std::vector<float> logits(vocab);
  EXPECT_TRUE(
      solo_model->Prefill(*slot, absl::MakeConstSpan(s.tokens).subspan(0, prompt), logits.data())
          .ok());
  s.solo.push_back(logits);
  for (int i = prompt; i < total; ++i) {
    EXPECT_TRUE(solo_model->Decode({&*slot, 1}, {&s.tokens[i], 1}, logits.data()).ok());
    s.solo.push_back(logits);
  }
  solo_model->ReleaseSlot(*slot);
  return s;
}

class BatchedDecodeTest : public ::testing::TestWithParam<std::tuple<bool, const char*>> {
 protected:
  BatchedDecodeTest() : attention_path_(std::get<1>(GetParam())) {}

  void SetUp() override {
    config_ = TinyConfig(std::get<0>(GetParam()));
    solo_ = MakeModel(config_, 11, 1);
    batched_ = MakeModel(config_, 11, 6);
    ASSERT_NE(solo_, nullptr);
    ASSERT_NE(batched_, nullptr);
  }

  void Start(Sequence* s) {
    absl::StatusOr<int> slot = batched_->AcquireSlot();
    ASSERT_TRUE(slot.ok()) << slot.status();
    s->slot = *slot;
    std::vector<float> logits(config_.vocab_size);
    ASSERT_TRUE(
        batched_
            ->Prefill(s->slot, absl::MakeConstSpan(s->tokens).subspan(0, s->prompt), logits.data())
            .ok());
    s->consumed = s->prompt;
    EXPECT_LE(MaxAbsDiff(logits.data(), s->solo[0].data(), config_.vocab_size), kTolerance);
  }

  // One batched Decode over `seqs` in the given order; each row must equal the solo logits.
  void Step(const std::vector<Sequence*>& seqs) {
    const int vocab = config_.vocab_size;
    std::vector<int> slots;
    std::vector<int32_t> tokens;
    for (Sequence* s : seqs) {
      slots.push_back(s->slot);
      tokens.push_back(s->tokens[s->consumed]);
    }
    std::vector<float> logits(seqs.size() * vocab);
    ASSERT_TRUE(batched_->Decode(slots, tokens, logits.data()).ok());
    for (size_t i = 0; i < seqs.size(); ++i) {
      Sequence* s = seqs[i];
      ++s->consumed;
      EXPECT_EQ(batched_->SlotLength(s->slot), s->consumed);
      const std::vector<float>& want = s->solo[s->consumed - s->prompt];
      EXPECT_LE(MaxAbsDiff(&logits[i * vocab], want.data(), vocab), kTolerance)
          << "row " << i << " (slot " << s->slot << ") at length " << s->consumed;
    }
  }

  ScopedAttentionPath attention_path_;
  LlamaConfig config_;
  std::unique_ptr<TextModel> solo_, batched_;
};

TEST_P(BatchedDecodeTest, EqualsSoloDecoding) {
  const int prompts[] = {1, 4, 9, 2, 15};
  std::vector<Sequence> seqs;
  for (int i = 0; i < 5; ++i) seqs.push_back(MakeSequence(solo_.get(), prompts[i], 40, 100 + i));
  Sequence late = MakeSequence(solo_.get(), 6, 30, 200);
  for (Sequence& s : seqs) Start(&s);
  EXPECT_EQ(batched_->free_slots(), 1);

  // Every active slot, in a caller order unlike the slot order (the dense path).
  std::vector<Sequence*> all = {&seqs[3], &seqs[0], &seqs[4], &seqs[1], &seqs[2]};
  for (int step = 0; step < 6; ++step) Step(all);

  // A hole in the middle of the batch, then a newcomer.
  batched_->ReleaseSlot(seqs[2].slot);
  EXPECT_EQ(batched_->free_slots(), 2);
  all = {&seqs[0], &seqs[1], &seqs[3], &seqs[4]};
  for (int step = 0; step < 3; ++step) Step(all);
  Start(&late);
  all = {&seqs[4], &late, &seqs[0], &seqs[3], &seqs[1]};
  for (int step = 0; step < 4; ++step) Step(all);

  // Subsets and permutations of the active slots (the general path), then everyone again.
  Step({&seqs[3], &late});
  Step({&seqs[4], &seqs[0]});
  Step({&late, &seqs[1], &seqs[3]});
  Step({&seqs[0]});
  all = {&late, &seqs[0], &seqs[1], &seqs[3], &seqs[4]};
  for (int step = 0; step < 3; ++step) Step(all);

  // Releasing the last row and the first row keeps the rest intact.
  batched_->ReleaseSlot(seqs[0].slot);
  batched_->ReleaseSlot(late.slot);
  all = {&seqs[3], &seqs[1], &seqs[4]};
  for (int step = 0; step < 3; ++step) Step(all);
  EXPECT_EQ(batched_->free_slots(), 3);
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, BatchedDecodeTest,
                         ::testing::Combine(::testing::Bool(),
                                            ::testing::ValuesIn(kAttentionPaths)),
                         [](const ::testing::TestParamInfo<std::tuple<bool, const char*>>& info) {
                           const std::string path = std::get<1>(info.param);
                           return std::string(std::get<0>(info.param) ? "Tied" : "Untied") + "_" +
                                  (path.empty() ? "native" : path);
                         });

TEST(LlamaModelTest, BatchedDecodeAlsoMatchesForward) {
  // Ties the batched path to the cache-free one directly, at batch size 5 (gemm, not gemv), with
  // rows at contexts from 30 to 95 positions in the same steps.
  const LlamaConfig config = TinyConfig(true, 32, 128);
  const int vocab = config.vocab_size;
  const int prompts[] = {30, 50, 63, 70, 80};
  const int steps = 15;
  for (const char* path : kAttentionPaths) {
    SCOPED_TRACE(path);
    ScopedAttentionPath scoped(path);
    std::unique_ptr<TextModel> model = MakeModel(config, 5, 5);
    ASSERT_NE(model, nullptr);
    std::vector<std::vector<int32_t>> seqs;
    std::vector<std::vector<float>> full(5);
    std::vector<int> slots;
    for (int i = 0; i < 5; ++i) {
      seqs.push_back(Tokens(prompts[i] + steps, 40 + i, vocab));
      ASSERT_TRUE(model->Forward(seqs[i], &full[i]).ok());
      slots.push_back(*model->AcquireSlot());
      std::vector<float> logits(vocab);
      ASSERT_TRUE(model
                      ->Prefill(slots[i], absl::MakeConstSpan(seqs[i]).subspan(0, prompts[i]),
                                logits.data())
                      .ok());
    }
    std::vector<float> logits(5 * vocab);
    float worst = 0;
    for (int step = 0; step < steps; ++step) {
      std::vector<int32_t> tokens;
      for (int i = 0; i < 5; ++i) tokens.push_back(seqs[i][prompts[i] + step]);
      ASSERT_TRUE(model->Decode(slots, tokens, logits.data()).ok());
      for (int i = 0; i < 5; ++i) {
        worst = std::max(
            worst, MaxAbsDiff(&logits[i * vocab], &full[i][(prompts[i] + step) * vocab], vocab));
      }
    }
    EXPECT_LE(worst, kTolerance);
  }
}

// --- errors ---------------------------------------------------------------------------------

// The CPU decode loops compute a row with the same bits alone, beside others (in the blocks of
// four that share the weight loads, or past them) and on any number of threads: a sequence's
// text cannot depend on what is batched with it.
TEST(LlamaModelTest, CpuDecodeIsBitwiseBatchAndThreadInvariant) {
  // dim 256: matrices of 512 and more rows, which the loops split over two threads.
  const LlamaConfig config = TinyConfig(/*tied=*/true, 256, 64);
  const int vocab = config.vocab_size;
  const std::vector<int32_t> prompt = Tokens(6, 3, vocab), steps = Tokens(12, 4, vocab);
  // Decodes `steps` after `prompt` in slot 0, with `others` sequences beside it in every step,
  // on `threads` threads; slot 0's logits of every step.
  auto run = [&](int others, int threads) {
    SetComputeThreads(threads);
    std::unique_ptr<TextModel> model = MakeModel(config, 5, 6);
    std::vector<int> slots;
    std::vector<float> logits(6 * vocab);
    for (int i = 0; i <= others; ++i) {
      slots.push_back(*model->AcquireSlot());
      EXPECT_TRUE(model->Prefill(slots.back(), i == 0 ? prompt : Tokens(3 + i, 10 + i, vocab),
                                 logits.data())
                      .ok());
    }
    std::vector<float> out;
    for (size_t k = 0; k < steps.size(); ++k) {
      std::vector<int32_t> tokens(slots.size(), steps[k]);
      EXPECT_TRUE(model->Decode(slots, tokens, logits.data()).ok());
      out.insert(out.end(), logits.begin(), logits.begin() + vocab);
    }
    return out;
  };
  const std::vector<float> alone = run(0, 1);
  EXPECT_EQ(run(0, 2), alone);
  EXPECT_EQ(run(1, 1), alone);
  EXPECT_EQ(run(2, 2), alone);
  EXPECT_EQ(run(4, 1), alone);  // slot 0 in a block of four, one more past it
  EXPECT_EQ(run(5, 2), alone);
  SetComputeThreads(0);
}

// Steps of 16 rows and more multiply in sgemm (then attend in the loops): each row within rounding
// of decoding it alone.
TEST(LlamaModelTest, LargeCpuStepsMatchSoloDecodingWithinRounding) {
  const LlamaConfig config = TinyConfig(/*tied=*/false);
  const int vocab = config.vocab_size, n = 17;
  std::unique_ptr<TextModel> batched = MakeModel(config, 8, n), solo = MakeModel(config, 8, 1);
  std::vector<int> slots;
  std::vector<float> logits(n * vocab), alone(vocab);
  for (int i = 0; i < n; ++i) {
    slots.push_back(*batched->AcquireSlot());
    ASSERT_TRUE(
        batched->Prefill(slots.back(), Tokens(2 + i % 5, 20 + i, vocab), logits.data()).ok());
  }
  std::vector<std::vector<int32_t>> steps(n);
  for (int step = 0; step < 6; ++step) {
    std::vector<int32_t> tokens(n);
    for (int i = 0; i < n; ++i) tokens[i] = steps[i].emplace_back((i * 7 + step * 3) % vocab);
    ASSERT_TRUE(batched->Decode(slots, tokens, logits.data()).ok());
  }
  // The last step's row i, against sequence i decoded alone.
  for (int i = 0; i < n; ++i) {
    const int slot = *solo->AcquireSlot();
    ASSERT_TRUE(solo->Prefill(slot, Tokens(2 + i % 5, 20 + i, vocab), alone.data()).ok());
    for (int32_t token : steps[i]) {
      ASSERT_TRUE(solo->Decode({&slot, 1}, {&token, 1}, alone.data()).ok());
    }
    EXPECT_LE(MaxAbsDiff(&logits[i * vocab], alone.data(), vocab), kTolerance) << "row " << i;
    solo->ReleaseSlot(slot);
  }
}

TEST(LlamaModelTest, MissingTensorIsNamed) {
  const LlamaConfig config = TinyConfig(false, 32);
  TensorMap weights = *RandomLlamaWeights(config, 1);
  weights.erase("layers.1.feed_forward.w3.weight");
  absl::StatusOr<std::unique_ptr<TextModel>> model = CreateLlamaModel(config, weights, {});
  ASSERT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("layers.1.feed_forward.w3.weight"), std::string::npos);
}

TEST(LlamaModelTest, WrongShapeIsNamedWithBothShapes) {
  const LlamaConfig config = TinyConfig(false, 32);
  TensorMap weights = *RandomLlamaWeights(config, 1);
  TensorData& wk = weights["layers.0.attention.wk.weight"];  // [16, 32]
  wk.shape = {32, 16};
  absl::StatusOr<std::unique_ptr<TextModel>> model = CreateLlamaModel(config, weights, {});
  ASSERT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(model.status().message());
  EXPECT_NE(message.find("layers.0.attention.wk.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("[16, 32]"), std::string::npos) << message;
  EXPECT_NE(message.find("[32, 16]"), std::string::npos) << message;
}

TEST(LlamaModelTest, UnknownTensorIsAnError) {
  const LlamaConfig config = TinyConfig(true, 32);
  TensorMap weights = *RandomLlamaWeights(config, 1);
  EXPECT_EQ(weights.count("output.weight"), 0u);  // tied: no separate output
  weights["output.weight"] = weights["tok_embeddings.weight"];
  absl::StatusOr<std::unique_ptr<TextModel>> model = CreateLlamaModel(config, weights, {});
  ASSERT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("output.weight"), std::string::npos);
  weights.erase("output.weight");
  weights["layers.7.extra"] = weights["norm.weight"];
  model = CreateLlamaModel(config, weights, {});
  ASSERT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("layers.7.extra"), std::string::npos);
}

TEST(LlamaModelTest, BadOptions) {
  const LlamaConfig config = TinyConfig(true, 32);
  const TensorMap weights = *RandomLlamaWeights(config, 1);
  TextModelOptions options;
  options.max_slots = 0;
  EXPECT_EQ(CreateLlamaModel(config, weights, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.max_slots = 1;
  options.device = "tpu:0";
  EXPECT_EQ(CreateLlamaModel(config, weights, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  if (CudaDeviceCount() == 0) {
    options.device = "cuda:0";
    EXPECT_EQ(CreateLlamaModel(config, weights, options).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

TEST(LlamaModelTest, ContextOverflowAndBadInputs) {
  const LlamaConfig config = TinyConfig(false, 32);  // seq_len 64
  std::unique_ptr<TextModel> model = MakeModel(config, 2, 2);
  ASSERT_NE(model, nullptr);
  const int vocab = config.vocab_size;
  std::vector<float> logits(vocab);
  int slot = *model->AcquireSlot();

  absl::Status s = model->Prefill(slot, Tokens(65, 1, vocab), logits.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("64"), std::string::npos) << s;
  EXPECT_NE(s.message().find("65"), std::string::npos) << s;
  EXPECT_EQ(model->SlotLength(slot), 0);  // nothing was appended

  ASSERT_TRUE(model->Prefill(slot, Tokens(60, 1, vocab), logits.data()).ok());
  EXPECT_EQ(model->Prefill(slot, Tokens(5, 2, vocab), logits.data()).code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> one = {3};
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(model->Decode({&slot, 1}, one, logits.data()).ok());
  EXPECT_EQ(model->SlotLength(slot), 64);
  s = model->Decode({&slot, 1}, one, logits.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("64"), std::string::npos) << s;
  EXPECT_EQ(model->SlotLength(slot), 64);

  std::vector<float> all;
  EXPECT_EQ(model->Forward(Tokens(65, 1, vocab), &all).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Forward({}, &all).code(), absl::StatusCode::kInvalidArgument);

  // Bad tokens, slots and shapes.
  const std::vector<int32_t> bad_token = {vocab};
  int other = *model->AcquireSlot();
  EXPECT_EQ(model->Prefill(other, bad_token, logits.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Prefill(other, {}, logits.data()).code(), absl::StatusCode::kInvalidArgument);
  const int unacquired = 5;
  EXPECT_EQ(model->Decode({&unacquired, 1}, one, logits.data()).code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<int> twice = {other, other};
  const std::vector<int32_t> two = {1, 2};
  std::vector<float> two_logits(2 * vocab);
  EXPECT_EQ(model->Decode(twice, two, two_logits.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Decode({&other, 1}, two, two_logits.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->SlotLength(other), 0);
}

TEST(LlamaModelTest, SlotsRunOut) {
  const LlamaConfig config = TinyConfig(true, 32);
  std::unique_ptr<TextModel> model = MakeModel(config, 2, 3);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->max_slots(), 3);
  std::vector<int> slots;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<int> slot = model->AcquireSlot();
    ASSERT_TRUE(slot.ok());
    slots.push_back(*slot);
  }
  EXPECT_EQ(model->free_slots(), 0);
  EXPECT_EQ(model->AcquireSlot().status().code(), absl::StatusCode::kResourceExhausted);
  model->ReleaseSlot(slots[1]);
  EXPECT_EQ(model->free_slots(), 1);
  absl::StatusOr<int> again = model->AcquireSlot();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(model->SlotLength(*again), 0);
  EXPECT_EQ(model->AcquireSlot().status().code(), absl::StatusCode::kResourceExhausted);
}

// --- weights --------------------------------------------------------------------------------

TEST(LlamaWeightsTest, RandomWeightsAreDeterministicInTheSeed) {
  const LlamaConfig config = TinyConfig(false, 32);
  const TensorMap a = *RandomLlamaWeights(config, 42);
  const TensorMap b = *RandomLlamaWeights(config, 42);
  const TensorMap c = *RandomLlamaWeights(config, 43);
  ASSERT_EQ(a.size(), 3u + 9u * config.n_layers);
  for (const auto& [name, t] : a) {
    EXPECT_EQ(t.dtype, DType::kF32);
    EXPECT_EQ(t.bytes, b.at(name).bytes) << name;
    if (t.shape.size() == 2) {
      EXPECT_NE(t.bytes, c.at(name).bytes) << name;
    } else {
      // Norm gains start at one.
      const float* p = reinterpret_cast<const float*>(t.bytes.data());
      for (int64_t i = 0; i < t.shape[0]; ++i) ASSERT_EQ(p[i], 1.0f) << name;
    }
  }
  // Standard deviations: 0.02, and 0.02/sqrt(2*n_layers) for the projections back into the
  // residual stream.
  auto stddev = [](const TensorData& t) {
    const float* p = reinterpret_cast<const float*>(t.bytes.data());
    const size_t n = t.bytes.size() / sizeof(float);
    double sum = 0, sq = 0;
    for (size_t i = 0; i < n; ++i) sum += p[i], sq += double{p[i]} * p[i];
    return std::sqrt(sq / n - (sum / n) * (sum / n));
  };
  EXPECT_NEAR(stddev(a.at("tok_embeddings.weight")), 0.02, 0.002);
  EXPECT_NEAR(stddev(a.at("layers.0.feed_forward.w1.weight")), 0.02, 0.002);
  EXPECT_NEAR(stddev(a.at("layers.1.attention.wo.weight")), 0.01, 0.001);
  EXPECT_NEAR(stddev(a.at("layers.1.feed_forward.w2.weight")), 0.01, 0.001);

  TextModelOptions options;
  options.max_slots = 1;
  absl::StatusOr<std::unique_ptr<TextModel>> model = CreateLlamaModel(config, a, options);
  ASSERT_TRUE(model.ok()) << model.status();
  int64_t params = 0;
  for (const auto& [name, t] : a) params += t.bytes.size() / sizeof(float);
  EXPECT_EQ((*model)->parameter_count(), params);
}

// BF16 and F16 inputs load as the float32 values they hold.
TEST(LlamaWeightsTest, HalfPrecisionInputs) {
  const LlamaConfig config = TinyConfig(false, 32);
  TensorMap f32 = *RandomLlamaWeights(config, 9);
  TensorMap bf16 = f32;
  for (auto& [name, t] : f32) {
    // Truncate to bf16 in both maps: the upper 16 bits of each float.
    float* p = reinterpret_cast<float*>(t.bytes.data());
    TensorData& h = bf16[name];
    h.dtype = DType::kBF16;
    h.bytes.resize(t.bytes.size() / 2);
    for (size_t i = 0; i < t.bytes.size() / 4; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &p[i], 4);
      bits &= 0xffff0000u;
      std::memcpy(&p[i], &bits, 4);
      const uint16_t upper = static_cast<uint16_t>(bits >> 16);
      std::memcpy(&h.bytes[2 * i], &upper, 2);
    }
  }
  TextModelOptions options;
  options.max_slots = 1;
  auto a = CreateLlamaModel(config, f32, options);
  auto b = CreateLlamaModel(config, bf16, options);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  const std::vector<int32_t> tokens = Tokens(12, 3, config.vocab_size);
  std::vector<float> la, lb;
  ASSERT_TRUE((*a)->Forward(tokens, &la).ok());
  ASSERT_TRUE((*b)->Forward(tokens, &lb).ok());
  ASSERT_EQ(la.size(), lb.size());
  EXPECT_EQ(MaxAbsDiff(la.data(), lb.data(), la.size()), 0.0f);

  // F16: a value exactly representable in half precision (norm gains of one) goes through.
  TensorMap f16 = f32;
  TensorData& norm = f16["norm.weight"];
  norm.dtype = DType::kF16;
  norm.bytes.assign(config.dim * 2, '\0');
  for (int i = 0; i < config.dim; ++i) {
    const uint16_t one = 0x3c00;
    std::memcpy(&norm.bytes[2 * i], &one, 2);
  }
  auto c = CreateLlamaModel(config, f16, options);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<float> lc;
  ASSERT_TRUE((*c)->Forward(tokens, &lc).ok());
  EXPECT_EQ(MaxAbsDiff(la.data(), lc.data(), la.size()), 0.0f);

  // Other dtypes and byte counts that disagree with the shape are refused.
  TensorMap bad = f32;
  bad["norm.weight"].dtype = DType::kI32;
  EXPECT_EQ(CreateLlamaModel(config, bad, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = f32;
  bad["norm.weight"].bytes.pop_back();
  EXPECT_EQ(CreateLlamaModel(config, bad, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem

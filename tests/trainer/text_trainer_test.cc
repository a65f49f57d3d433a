// The LLM trainer on a tiny seeded model and corpus: the training forward is the serving model's
// forward; loss falls when overfitting; a run restored from a checkpoint continues with exactly
// the losses of an uninterrupted run; evaluation reports bits per byte and a sample; export
// gives a servable model directory.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <thread>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "models/formats/safetensors.h"
#include "models/llama/llama.h"
#include "models/llama/llama_train_net.h"
#include "models/model_dir.h"
#include "tests/testing/base/files.h"
#include "tests/testing/base/tiny_configs.h"
#include "trainer/checkpoint.h"
#include "trainer/train_common.h"
#include "trainer/trainer.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

using testing::MakeTempDir;

// 60 short fortune-format documents with some repeated structure to learn.
std::string WriteCorpus(const std::string& dir) {
  const char* animals[] = {"fox", "dog", "cat", "owl", "bee", "yak"};
  const char* verbs[] = {"jumps over", "runs past", "sleeps near", "looks at"};
  std::string text;
  for (int i = 0; i < 60; ++i) {
    absl::StrAppend(&text, "The ", animals[i % 6], " ", verbs[i % 4], " the ",
                    animals[(i + 1) % 6], ".\nIt is day ", i % 7, " of the week.\n%\n");
  }
  const std::string path = dir + "/corpus.txt";
  EXPECT_TRUE(WriteFileAtomically(path, text).ok());
  return path;
}

TrainOptions TinyOptions(const std::string& corpus) {
  TrainOptions o;
  o.job_id = "test";
  o.kind = ModelKind::kText;
  o.dataset_path = corpus;
  o.llama = testing::LlamaShape({/*dim=*/32, /*layers=*/2, /*heads=*/4, /*kv_heads=*/2,
                                 /*seq_len=*/32, /*vocab=*/300});
  o.hyper.steps = 60;
  o.hyper.batch_size = 4;
  o.hyper.grad_accum = 1;
  o.hyper.lr = 1e-2;
  o.hyper.min_lr = 1e-3;
  o.hyper.warmup_steps = 5;
  o.hyper.seed = 7;
  o.keep_checkpoints = 2;
  return o;
}

std::vector<double> Train(Trainer* trainer, int64_t steps) {
  std::vector<double> losses;
  while (trainer->step() < steps) {
    absl::StatusOr<std::optional<StepMetrics>> m = trainer->MicroStep();
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) break;
    if (m->has_value()) losses.push_back((*m)->loss);
  }
  return losses;
}

TEST(LlamaTrainNetTest, ForwardMatchesTheServingModel) {
  LlamaConfig c = testing::LlamaShape({/*dim=*/32, /*layers=*/2, /*heads=*/4, /*kv_heads=*/2,
                                       /*seq_len=*/16, /*vocab=*/64});
  ASSERT_TRUE(c.Normalize().ok());
  absl::StatusOr<TensorMap> weights = RandomLlamaWeights(c, 3);
  ASSERT_TRUE(weights.ok());
  absl::StatusOr<std::unique_ptr<TextModel>> serving = CreateLlamaModel(c, *weights, {});
  ASSERT_TRUE(serving.ok()) << serving.status();
  absl::StatusOr<std::unique_ptr<LlamaTrainNet>> net = LlamaTrainNet::Create(c, *weights, "cpu");
  ASSERT_TRUE(net.ok()) << net.status();
  const std::vector<int32_t> tokens = {1, 5, 9, 33, 2, 60, 7, 7, 12, 40, 3};
  std::vector<float> expected;
  ASSERT_TRUE((*serving)->Forward(tokens, &expected).ok());
  torch::Tensor ids = torch::tensor(std::vector<int64_t>(tokens.begin(), tokens.end()))
                          .view({1, -1});
  torch::Tensor logits = (*net)->Forward(ids).contiguous();  // [1, T, V]
  ASSERT_EQ(logits.numel(), static_cast<int64_t>(expected.size()));
  const float* got = logits.data_ptr<float>();
  for (size_t i = 0; i < expected.size(); ++i) ASSERT_NEAR(got[i], expected[i], 1e-4) << i;
}

// Mixed precision: bfloat16 operands (8 significant bits) move the logits by about a percent of
// their spread, no more; logits and the weights' gradients stay float32.
TEST(LlamaTrainNetTest, Bfloat16MatmulsStayCloseToFloat32) {
  LlamaConfig c = testing::LlamaShape({/*dim=*/32, /*layers=*/2, /*heads=*/4, /*kv_heads=*/2,
                                       /*seq_len=*/16, /*vocab=*/64});
  ASSERT_TRUE(c.Normalize().ok());
  absl::StatusOr<TensorMap> weights = RandomLlamaWeights(c, 3);
  ASSERT_TRUE(weights.ok());
  absl::StatusOr<std::unique_ptr<LlamaTrainNet>> net = LlamaTrainNet::Create(c, *weights, "cpu");
  ASSERT_TRUE(net.ok()) << net.status();
  const torch::Tensor ids = torch::tensor({1, 5, 9, 33, 2, 60, 7, 7, 12, 40, 3}, torch::kInt64)
                                .view({1, -1});  // [1, T]
  const torch::Tensor exact = (*net)->Forward(ids).detach();                          // [1, T, V]
  const torch::Tensor mixed = (*net)->Forward(ids, {}, torch::kBFloat16);            // [1, T, V]
  EXPECT_EQ(mixed.scalar_type(), torch::kFloat);
  const double spread = exact.std().item<double>();
  const double err = (mixed.detach() - exact).abs().max().item<double>();
  EXPECT_GT(err, 0);  // the products really were rounded
  EXPECT_LT(err, 0.05 * spread);
  mixed.sum().backward();
  for (const auto& [name, p] : (*net)->parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_EQ(p.grad().scalar_type(), torch::kFloat) << name;
  }
}

// The (optimizer, precision) pairs every training test below runs with.
constexpr std::pair<const char*, const char*> kRecipes[] = {
    {kAdamW, kFp32}, {kMuon, kFp32}, {kMuon, kBf16Mixed}};

void LossFallsWhenOverfitting(const std::string& optimizer, const std::string& precision);

TEST(TextTrainerTest, LossFallsWhenOverfittingATinyCorpus) {
  for (const auto& [optimizer, precision] : kRecipes) {
    SCOPED_TRACE(absl::StrCat(optimizer, " ", precision));
    LossFallsWhenOverfitting(optimizer, precision);
  }
}

void LossFallsWhenOverfitting(const std::string& optimizer, const std::string& precision) {
  const std::string dir = MakeTempDir("text_trainer_test");
  TrainOptions o = TinyOptions(WriteCorpus(dir));
  o.hyper.optimizer = optimizer;
  o.hyper.precision = precision;
  absl::StatusOr<std::unique_ptr<Trainer>> t = CreateTextTrainer(o, dir + "/work", "", nullptr);
  ASSERT_TRUE(t.ok()) << t.status();
  absl::StatusOr<EvalMetrics> before = (*t)->Evaluate();
  ASSERT_TRUE(before.ok()) << before.status();
  std::vector<double> losses = Train(t->get(), o.hyper.steps);
  ASSERT_EQ(losses.size(), 60u);
  EXPECT_GT(losses.front(), std::log(300.0) - 1.0);  // about uniform at the start
  EXPECT_LT(losses.back(), 0.5 * losses.front());
  absl::StatusOr<EvalMetrics> after = (*t)->Evaluate();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_LT(after->bits_per_byte, 0.6 * before->bits_per_byte);
  EXPECT_GT(after->bits_per_byte, 0);
  EXPECT_FALSE(after->text_sample.empty());
  EXPECT_EQ((*t)->MicroStep().status().code(), absl::StatusCode::kFailedPrecondition);
  fs::remove_all(dir);
}

void RestoredRunContinuesExactly(const std::string& optimizer, const std::string& precision);

TEST(TextTrainerTest, RestoredRunContinuesWithExactlyTheSameLosses) {
  for (const auto& [optimizer, precision] : kRecipes) {
    SCOPED_TRACE(absl::StrCat(optimizer, " ", precision));
    RestoredRunContinuesExactly(optimizer, precision);
  }
}

void RestoredRunContinuesExactly(const std::string& optimizer, const std::string& precision) {
  const std::string dir = MakeTempDir("text_trainer_test");
  TrainOptions o = TinyOptions(WriteCorpus(dir));
  o.hyper.optimizer = optimizer;
  o.hyper.precision = precision;
  o.hyper.dropout = 0.1;  // its masks too are a function of the step
  o.hyper.steps = 8;
  o.hyper.grad_accum = 2;  // the restore happens between steps of two micro-batches each
  std::vector<double> uninterrupted;
  {
    auto t = CreateTextTrainer(o, dir + "/work", "", nullptr);
    ASSERT_TRUE(t.ok()) << t.status();
    uninterrupted = Train(t->get(), 8);
  }
  std::vector<double> resumed;
  const std::string ckpts = dir + "/checkpoints";
  {
    auto t = CreateTextTrainer(o, dir + "/work", ckpts, nullptr);
    ASSERT_TRUE(t.ok()) << t.status();
    resumed = Train(t->get(), 4);
    ASSERT_TRUE((*t)->SaveCheckpoint(ckpts).ok());
    Train(t->get(), 5);  // work lost in a crash: never checkpointed
  }
  std::string note;
  auto t = CreateTextTrainer(o, dir + "/work", ckpts, &note);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->step(), 4);
  EXPECT_NE(note.find("step 4"), std::string::npos) << note;
  for (double l : Train(t->get(), 8)) resumed.push_back(l);
  ASSERT_EQ(resumed.size(), uninterrupted.size());
  for (size_t i = 0; i < resumed.size(); ++i) EXPECT_EQ(resumed[i], uninterrupted[i]) << i;
  fs::remove_all(dir);
}

// Dropout changes what a step trains on (the masks are drawn, and differ step to step) but not
// the evaluation, which uses the whole network: two trainers from the same weights evaluate
// identically before training and train to different losses.
TEST(TextTrainerTest, DropoutAppliesToTrainingStepsOnly) {
  const std::string dir = MakeTempDir("text_dropout");
  TrainOptions o = TinyOptions(WriteCorpus(dir));
  o.hyper.steps = 3;
  TrainOptions d = o;
  d.hyper.dropout = 0.5;
  auto plain = CreateTextTrainer(o, dir + "/plain", "", nullptr);
  auto dropped = CreateTextTrainer(d, dir + "/dropped", "", nullptr);
  ASSERT_TRUE(plain.ok() && dropped.ok());
  absl::StatusOr<EvalMetrics> a = (*plain)->Evaluate();
  absl::StatusOr<EvalMetrics> b = (*dropped)->Evaluate();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->loss, b->loss);
  const std::vector<double> la = Train(plain->get(), 3);
  const std::vector<double> lb = Train(dropped->get(), 3);
  ASSERT_EQ(la.size(), 3u);
  ASSERT_EQ(lb.size(), 3u);
  for (size_t i = 0; i < la.size(); ++i) EXPECT_NE(la[i], lb[i]) << "step " << i + 1;
  fs::remove_all(dir);
}

// bf16-mixed rounds the training step's products, not the evaluation: from the same weights a
// float32 and a mixed-precision trainer evaluate identically, their first losses differ by
// rounding only, and their weights part after training.
TEST(TextTrainerTest, MixedPrecisionRoundsTrainingStepsNotEvaluations) {
  const std::string dir = MakeTempDir("text_bf16");
  TrainOptions o = TinyOptions(WriteCorpus(dir));
  o.hyper.optimizer = kMuon;
  o.hyper.steps = 3;
  TrainOptions m = o;
  m.hyper.precision = kBf16Mixed;
  auto exact = CreateTextTrainer(o, dir + "/exact", "", nullptr);
  auto mixed = CreateTextTrainer(m, dir + "/mixed", "", nullptr);
  ASSERT_TRUE(exact.ok() && mixed.ok());
  absl::StatusOr<EvalMetrics> a = (*exact)->Evaluate();
  absl::StatusOr<EvalMetrics> b = (*mixed)->Evaluate();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->loss, b->loss);
  const std::vector<double> la = Train(exact->get(), 3);
  const std::vector<double> lb = Train(mixed->get(), 3);
  ASSERT_EQ(la.size(), 3u);
  ASSERT_EQ(lb.size(), 3u);
  EXPECT_NE(la[0], lb[0]);
  EXPECT_NEAR(la[0], lb[0], 0.01 * la[0]);
  a = (*exact)->Evaluate();
  b = (*mixed)->Evaluate();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->loss, b->loss);
  EXPECT_NEAR(a->loss, b->loss, 0.05 * a->loss);
  fs::remove_all(dir);
}

// "auto" becomes bf16-mixed for text on a GPU, or on a CPU that multiplies bfloat16 natively;
// fp32 for images; the explicit values stay as they are.
TEST(TextTrainerTest, AutoPrecisionResolvesByKindAndDevice) {
  TrainOptions o;
  o.kind = ModelKind::kText;
  o.hyper.precision = kAutoPrecision;
  o.device = "cuda:1";
  EXPECT_EQ(ResolvePrecision(o).hyper.precision, kBf16Mixed);
  o.device = "cpu";
  const bool bf16_cpu =
      __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
  EXPECT_EQ(ResolvePrecision(o).hyper.precision, bf16_cpu ? kBf16Mixed : kFp32);
  o.kind = ModelKind::kImage;
  o.device = "cuda:0";
  EXPECT_EQ(ResolvePrecision(o).hyper.precision, kFp32);
  o.kind = ModelKind::kText;
  for (const char* fixed : {kFp32, kBf16Mixed}) {
    o.hyper.precision = fixed;
    EXPECT_EQ(ResolvePrecision(o).hyper.precision, fixed);
  }
}

TEST(TextTrainerTest, CorruptNewestCheckpointFallsBackToThePreviousOne) {
  const std::string dir = MakeTempDir("text_trainer_test");
  TrainOptions o = TinyOptions(WriteCorpus(dir));
  o.hyper.steps = 4;
  const std::string ckpts = dir + "/checkpoints";
  {
    auto t = CreateTextTrainer(o, dir + "/work", ckpts, nullptr);
    ASSERT_TRUE(t.ok()) << t.status();
    Train(t->get(), 2);
    ASSERT_TRUE((*t)->SaveCheckpoint(ckpts).ok());
    Train(t->get(), 3);
    ASSERT_TRUE((*t)->SaveCheckpoint(ckpts).ok());
  }
  // Flip one byte in the newest checkpoint's weights.
  const std::string victim = ckpts + "/step-0000000003/model.safetensors";
  std::string bytes = *ReadFile(victim);
  bytes[bytes.size() - 3] ^= 0x5a;
  ASSERT_TRUE(WriteFileAtomically(victim, bytes).ok());
  std::string note;
  auto t = CreateTextTrainer(o, dir + "/work", ckpts, &note);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->step(), 2);
  EXPECT_NE(note.find("CRC-32"), std::string::npos) << note;
  fs::remove_all(dir);
}

TEST(TextTrainerTest, CheckpointOfAnotherConfigIsRefused) {
  const std::string dir = MakeTempDir("text_trainer_test");
  TrainOptions o = TinyOptions(WriteCorpus(dir));
  o.hyper.steps = 2;
  const std::string ckpts = dir + "/checkpoints";
  {
    auto t = CreateTextTrainer(o, dir + "/work", ckpts, nullptr);
    ASSERT_TRUE(t.ok()) << t.status();
    Train(t->get(), 1);
    ASSERT_TRUE((*t)->SaveCheckpoint(ckpts).ok());
  }
  o.llama.dim = 64;
  auto t = CreateTextTrainer(o, dir + "/work", ckpts, nullptr);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition) << t.status();
  fs::remove_all(dir);
}

TEST(TextTrainerTest, ExportedModelServesWithTheTrainedWeights) {
  const std::string dir = MakeTempDir("text_trainer_test");
  TrainOptions o = TinyOptions(WriteCorpus(dir));
  o.hyper.steps = 3;
  auto t = CreateTextTrainer(o, dir + "/work", "", nullptr);
  ASSERT_TRUE(t.ok()) << t.status();
  Train(t->get(), 3);
  ASSERT_TRUE((*t)->ExportModel(dir + "/model", {"train job test", "test", 3}).ok());
  EXPECT_EQ((*t)->ExportModel(dir + "/model", {}).code(), absl::StatusCode::kAlreadyExists);
  absl::StatusOr<ModelDir> model = ReadModelDir(dir + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->provenance.train_step, 3);
  absl::StatusOr<SafetensorsFile> w = ReadSafetensors(model->weights_path());
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE(CreateLlamaModel(model->llama, w->tensors, {}).ok());
  fs::remove_all(dir);
}

// --- chunks: the unit the device loop interleaves with inference ------------------------------

// A trainer of `o` with `chunk_rows`, built in `dir` (its tokenizer is trained there once and
// reused, so every trainer of a test has the same one).
std::unique_ptr<Trainer> ChunkedTrainer(TrainOptions o, int chunk_rows, const std::string& dir) {
  o.hyper.chunk_rows = chunk_rows;
  auto t = CreateTextTrainer(o, dir + "/work", "", nullptr);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

// One chunk at a time, each run by `run` (RunChunk on some thread), `between` run after each; the
// completed steps' losses.
using ChunkRunner = std::function<absl::StatusOr<std::optional<StepMetrics>>(Trainer*)>;
std::vector<double> TrainByChunks(Trainer* t, int64_t steps, const std::function<void()>& between,
                                  const ChunkRunner& run = [](Trainer* t) {
                                    return t->RunChunk();
                                  }) {
  std::vector<double> losses;
  while (t->step() < steps) {
    absl::StatusOr<std::optional<StepMetrics>> m = run(t);
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) break;
    if (m->has_value()) losses.push_back((*m)->loss);
    between();
  }
  return losses;
}

void ChunksEqualTheWholeMicroBatch(double dropout);

TEST(TextTrainerChunksTest, ChunksEqualTheWholeMicroBatchWithinFloatRounding) {
  for (double dropout : {0.0, 0.2}) {  // a row's dropout masks do not depend on its chunk
    SCOPED_TRACE(::testing::Message() << "dropout " << dropout);
    ChunksEqualTheWholeMicroBatch(dropout);
  }
}

void ChunksEqualTheWholeMicroBatch(double dropout) {
  const std::string dir = MakeTempDir("text_chunks_equal");
  TrainOptions o = TinyOptions(WriteCorpus(dir));
  o.hyper.steps = 10;
  o.hyper.grad_accum = 2;
  o.hyper.dropout = dropout;
  std::unique_ptr<Trainer> whole = ChunkedTrainer(o, 0, dir);
  std::unique_ptr<Trainer> ones = ChunkedTrainer(o, 1, dir);
  std::unique_ptr<Trainer> threes = ChunkedTrainer(o, 3, dir);  // 4 rows: chunks of 3 and 1
  ASSERT_TRUE(whole && ones && threes);
  EXPECT_EQ(whole->chunk_rows(), 4);
  EXPECT_EQ(ones->chunk_rows(), 1);
  const std::vector<double> a = Train(whole.get(), 10);
  const std::vector<double> b = Train(ones.get(), 10);
  const std::vector<double> c = Train(threes.get(), 10);
  ASSERT_EQ(a.size(), 10u);
  ASSERT_EQ(b.size(), 10u);
  ASSERT_EQ(c.size(), 10u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(b[i], a[i], 1e-4 * std::abs(a[i])) << "step " << i + 1;
    EXPECT_NEAR(c[i], a[i], 1e-4 * std::abs(a[i])) << "step " << i + 1;
  }
  fs::remove_all(dir);
}

TEST(TextTrainerChunksTest, SameChunksGiveBitIdenticalLossesWhateverRunsBetweenThem) {
  const std::string dir = MakeTempDir("text_chunks_interleaved");
  TrainOptions o = TinyOptions(WriteCorpus(dir));
  o.hyper.steps = 6;
  o.hyper.grad_accum = 2;
  std::unique_ptr<Trainer> alone = ChunkedTrainer(o, 2, dir);
  std::unique_ptr<Trainer> busy = ChunkedTrainer(o, 2, dir);
  std::unique_ptr<Trainer> other = ChunkedTrainer(o, 1, dir);  // another job's chunks
  ASSERT_TRUE(alone && busy && other);
  // Inference between the chunks: a served model decoding on the same threads.
  LlamaConfig c = o.llama;
  ASSERT_TRUE(c.Normalize().ok());
  absl::StatusOr<TensorMap> weights = RandomLlamaWeights(c, 99);
  ASSERT_TRUE(weights.ok());
  absl::StatusOr<std::unique_ptr<TextModel>> serving = CreateLlamaModel(c, *weights, {});
  ASSERT_TRUE(serving.ok()) << serving.status();
  absl::StatusOr<int> slot = (*serving)->AcquireSlot();
  ASSERT_TRUE(slot.ok());
  std::vector<float> logits(c.vocab_size);
  ASSERT_TRUE((*serving)->Prefill(*slot, {1, 5, 9}, logits.data()).ok());
  int decoded = 0;

  const std::vector<double> expected = TrainByChunks(alone.get(), 6, [] {});
  int chunk = 0;
  const std::vector<double> got = TrainByChunks(busy.get(), 6, [&] {
    const int slots[] = {*slot};
    const int32_t tokens[] = {static_cast<int32_t>(7 + decoded % 50)};
    if ((*serving)->SlotLength(*slot) + 1 < c.seq_len) {
      EXPECT_TRUE((*serving)->Decode(slots, tokens, logits.data()).ok());
      ++decoded;
    }
    if (other->step() < 6) EXPECT_TRUE(other->RunChunk().ok());
  }, [&](Trainer* t) -> absl::StatusOr<std::optional<StepMetrics>> {
    if (++chunk % 3 != 0) return t->RunChunk();
    // Every third chunk on another thread, as a device loop's executor would run it.
    absl::StatusOr<std::optional<StepMetrics>> m = absl::InternalError("not run");
    std::thread([&] { m = t->RunChunk(); }).join();
    return m;
  });
  ASSERT_EQ(expected.size(), 6u);
  EXPECT_EQ(got, expected);  // bit for bit
  EXPECT_GT(decoded, 0);
  // And the weights at the end too.
  absl::StatusOr<TrainSnapshot> a = alone->Snapshot();
  absl::StatusOr<TrainSnapshot> b = busy->Snapshot();
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->model.size(), b->model.size());
  for (const auto& [name, t] : a->model) EXPECT_EQ(t.bytes, b->model.at(name).bytes) << name;
  fs::remove_all(dir);
}

TEST(TextTrainerChunksTest, CalibrationProbeLeavesTheRunUnchanged) {
  const std::string dir = MakeTempDir("text_chunks_probe");
  TrainOptions o = TinyOptions(WriteCorpus(dir));
  o.hyper.steps = 4;
  std::unique_ptr<Trainer> probed = ChunkedTrainer(o, 0, dir);
  std::unique_ptr<Trainer> plain = ChunkedTrainer(o, 2, dir);
  ASSERT_TRUE(probed && plain);
  absl::StatusOr<double> seconds = probed->ProbeChunk(2);
  ASSERT_TRUE(seconds.ok()) << seconds.status();
  EXPECT_GT(*seconds, 0);
  probed->SetChunkRows(2);
  EXPECT_EQ(probed->chunk_rows(), 2);
  EXPECT_EQ(Train(probed.get(), 4), Train(plain.get(), 4));
  fs::remove_all(dir);
}

TEST(TextTrainerChunksTest, ChunkedEvaluationEqualsTheWholeEvaluation) {
  const std::string dir = MakeTempDir("text_chunks_eval");
  TrainOptions o = TinyOptions(WriteCorpus(dir));
  o.hyper.steps = 3;
  // The same fresh weights (same seed), evaluated in units of one window or of four.
  std::unique_ptr<Trainer> whole = ChunkedTrainer(o, 0, dir);
  std::unique_ptr<Trainer> ones = ChunkedTrainer(o, 1, dir);
  ASSERT_TRUE(whole && ones);
  auto held_out = [](Trainer* t, int* units) {
    t->StartEvaluation();
    while (true) {
      absl::StatusOr<std::optional<EvalMetrics>> m = t->RunEvalChunk();
      EXPECT_TRUE(m.ok()) << m.status();
      ++*units;
      if (!m.ok() || m->has_value()) return m.ok() ? **m : EvalMetrics();
    }
  };
  int whole_units = 0, one_units = 0;
  const EvalMetrics a = held_out(whole.get(), &whole_units);
  const EvalMetrics b = held_out(ones.get(), &one_units);
  EXPECT_GT(one_units, whole_units);  // really cut into more units
  EXPECT_NEAR(b.loss, a.loss, 1e-4 * a.loss);
  EXPECT_NEAR(b.bits_per_byte, a.bits_per_byte, 1e-4 * a.bits_per_byte);
  // Evaluating twice in a row gives the same result (no state leaks between evaluations).
  int again = 0;
  EXPECT_EQ(held_out(whole.get(), &again).loss, a.loss);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tandem

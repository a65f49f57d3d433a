// The LLM trainer on a tiny seeded model and corpus: the training forward is the serving model's
// forward; loss falls when overfitting; a run restored from a checkpoint continues with exactly
// the losses of an uninterrupted run; evaluation reports bits per byte and a sample; export
// gives a servable model directory.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "models/formats/safetensors.h"
#include "models/llama/llama.h"
#include "models/llama/llama_train_net.h"
#include "models/model_dir.h"
#include "tests/testing/base/files.h"
#include "tests/testing/base/tiny_configs.h"
#include "trainer/adamw.h"
#include "trainer/checkpoint.h"
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

TEST(AdamWTest, NormsBiasesAndEmbeddingsAreExemptFromDecayByDefault) {
  EXPECT_TRUE(DecayByDefault("layers.0.attention.wq.weight", torch::zeros({4, 4}), false));
  EXPECT_TRUE(DecayByDefault("unet.conv_in.weight", torch::zeros({4, 1, 3, 3}), false));
  EXPECT_FALSE(DecayByDefault("layers.0.ffn_norm.weight", torch::zeros({4}), false));
  EXPECT_FALSE(DecayByDefault("unet.conv_in.bias", torch::zeros({4}), false));
  EXPECT_FALSE(DecayByDefault("tok_embeddings.weight", torch::zeros({8, 4}), false));
  EXPECT_FALSE(DecayByDefault("text.pos_embed.weight", torch::zeros({8, 4}), false));
  EXPECT_TRUE(DecayByDefault("tok_embeddings.weight", torch::zeros({8, 4}), true));
}

TEST(AdamWTest, OneStepMatchesTheClosedForm) {
  // First step: m = (1-b1) g, v = (1-b2) g^2, bias-corrected -> p -= lr * g/|g| (+ decay).
  torch::Tensor p = torch::tensor({1.0f, -2.0f}).set_requires_grad(true);
  p.mutable_grad() = torch::tensor({0.5f, -4.0f});
  AdamW opt({{"w", p, true}}, {0.9, 0.95, 1e-8, 0.1});
  const double norm = opt.Step(/*lr=*/0.01, /*grad_clip=*/0);
  EXPECT_NEAR(norm, std::sqrt(0.25 + 16.0), 1e-6);
  EXPECT_NEAR(p[0].item<float>(), 1.0 * (1 - 0.001) - 0.01, 1e-6);
  EXPECT_NEAR(p[1].item<float>(), -2.0 * (1 - 0.001) + 0.01, 1e-6);
}

TEST(AdamWTest, ClippingScalesTheGradientToTheLimit) {
  torch::Tensor p = torch::zeros({2}).set_requires_grad(true);
  p.mutable_grad() = torch::tensor({3.0f, 4.0f});  // norm 5
  AdamW a({{"w", p, false}}, {0.9, 0.95, 1e-8, 0.0});
  EXPECT_NEAR(a.Step(0.1, 1.0), 5.0, 1e-6);  // the norm before clipping is reported
  // Adam's first step is scale-free, so check the moment: m = 0.1 * g * (1/5).
  TensorMap state = a.State();
  const float* m = reinterpret_cast<const float*>(state.at("m.w").bytes.data());
  EXPECT_NEAR(m[0], 0.1 * 3.0 / 5.0, 1e-6);
  EXPECT_NEAR(m[1], 0.1 * 4.0 / 5.0, 1e-6);
}

TEST(TextTrainerTest, LossFallsWhenOverfittingATinyCorpus) {
  const std::string dir = MakeTempDir("text_trainer_test");
  TrainOptions o = TinyOptions(WriteCorpus(dir));
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

TEST(TextTrainerTest, RestoredRunContinuesWithExactlyTheSameLosses) {
  const std::string dir = MakeTempDir("text_trainer_test");
  TrainOptions o = TinyOptions(WriteCorpus(dir));
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

}  // namespace
}  // namespace tandem

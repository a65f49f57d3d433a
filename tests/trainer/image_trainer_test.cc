// The diffusion half of training: the training forward (DiffusionTrainNet) against the served
// model's, gradients through it, the loss falling when overfitting a tiny image folder, a run
// restored from a checkpoint continuing with exactly the losses of an uninterrupted one, and
// evaluation (held-out MSE, a PNG grid of samples) on Fashion-MNIST.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "models/diffusion/diffusion_config.h"
#include "models/diffusion/diffusion_model.h"
#include "models/diffusion/diffusion_schedule.h"
#include "models/diffusion/diffusion_train_net.h"
#include "models/formats/png.h"
#include "models/formats/safetensors.h"
#include "models/image_model.h"
#include "models/model_dir.h"
#include "tests/testing/base/files.h"
#include "tests/testing/base/tiny_configs.h"
#include "trainer/checkpoint.h"
#include "trainer/train_options.h"
#include "trainer/trainer.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

constexpr char kFashionMnist[] = "/usr/share/datasets/fashion-mnist";

using testing::TempDir;

// Grey 12x12, two levels, attention at full resolution and in the middle, two res blocks.
DiffusionConfig NetConfig() {
  DiffusionConfig c = testing::TinyDiffusionShape();
  c.image_size = 12;
  c.channels = 1;
  c.res_blocks = 2;
  c.attention_levels = {0};
  c.text_layers = 2;
  c.text_seq_len = 6;
  EXPECT_TRUE(c.Normalize().ok());
  return c;
}

// The training forward gives the served model's raw output (rows with different timesteps;
// captions empty, short, with an inner 0 id, and longer than text_seq_len), grey and RGB.
TEST(DiffusionTrainNetTest, ForwardMatchesServing) {
  for (int channels : {1, 3}) {
    SCOPED_TRACE(absl::StrCat(channels, " channel(s)"));
    DiffusionConfig config = NetConfig();
    config.channels = channels;
    absl::StatusOr<TensorMap> weights = RandomDiffusionWeights(config, 7);
    ASSERT_TRUE(weights.ok()) << weights.status();
    ImageModelOptions mo;
    mo.max_samples = 4;
    absl::StatusOr<std::unique_ptr<DiffusionModel>> model =
        DiffusionModel::Create(config, *weights, mo);
    ASSERT_TRUE(model.ok()) << model.status();
    absl::StatusOr<std::unique_ptr<DiffusionTrainNet>> net =
        DiffusionTrainNet::Create(config, *weights, "cpu");
    ASSERT_TRUE(net.ok()) << net.status();

    const int64_t rows = 4, s = config.image_size;
    at::Generator gen = at::detail::createCPUGenerator(3);
    const torch::Tensor x = at::randn({rows, channels, s, s}, gen, torch::TensorOptions());
    const std::vector<int64_t> t = {0, 17, 63, 99};
    const std::vector<std::vector<int32_t>> captions = {
        {}, {5, 9}, {3, 0, 7}, {2, 4, 6, 8, 10, 12, 14, 16, 18}};
    const absl::StatusOr<torch::Tensor> served = (*model)->RawOutput(x, t, captions);
    ASSERT_TRUE(served.ok()) << served.status();
    const torch::Tensor ids = DiffusionTrainNet::CaptionIds(captions, config.text_seq_len);
    EXPECT_EQ(ids[0][0].item<int64_t>(), 1);   // BOS
    EXPECT_EQ(ids[0][1].item<int64_t>(), 0);   // padding
    EXPECT_EQ(ids[3][5].item<int64_t>(), 10);  // BOS + the first 5 ids: cut to text_seq_len
    const torch::Tensor out =
        (*net)->Forward(x, torch::tensor(t, torch::kInt64), ids);  // [R, C, H, W]
    ASSERT_EQ(out.sizes(), x.sizes());
    const torch::Tensor expected = served->to(torch::kCPU).clone();
    const double diff = (out.detach() - expected).abs().max().item<double>();
    EXPECT_LT(diff, 1e-4) << "max |train - serve| = " << diff;
    EXPECT_GT(expected.abs().max().item<double>(), 0.1);  // not trivially zero

    // Gradients reach every parameter.
    out.square().mean().backward();
    for (const auto& [name, p] : (*net)->parameters()) {
      ASSERT_TRUE(p.grad().defined()) << name;
      EXPECT_TRUE(torch::isfinite(p.grad()).all().item<bool>()) << name;
    }
    // Export: the same names, shapes and bytes as the weights it was made from.
    const TensorMap exported = (*net)->ExportWeights();
    ASSERT_EQ(exported.size(), weights->size());
    for (const auto& [name, t] : *weights) {
      auto it = exported.find(name);
      ASSERT_NE(it, exported.end()) << name;
      EXPECT_EQ(it->second.shape, t.shape) << name;
      EXPECT_EQ(it->second.bytes, t.bytes) << name;
    }
    EXPECT_EQ((*net)->parameter_count(), config.ParameterCount());
  }
}

TEST(DiffusionTrainNetTest, RejectsWrongWeights) {
  const DiffusionConfig config = NetConfig();
  absl::StatusOr<TensorMap> weights = RandomDiffusionWeights(config, 1);
  ASSERT_TRUE(weights.ok());
  TensorMap missing = *weights;
  missing.erase("unet.conv_in.weight");
  absl::StatusOr<std::unique_ptr<DiffusionTrainNet>> net =
      DiffusionTrainNet::Create(config, missing, "cpu");
  EXPECT_EQ(net.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(net.status().message().find("unet.conv_in.weight"), std::string::npos);
  EXPECT_EQ(DiffusionTrainNet::Create(config, *weights, "tpu").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// The trainer.

// An image folder of 8 grey 16x16 images: a bright square in one of 8 places, with a caption
// naming the place.
std::string WriteTinyFolder(const TempDir& dir) {
  const std::string path = dir / "shapes";
  fs::create_directories(path);
  std::ofstream meta(path + "/metadata.jsonl");
  const char* rows[] = {"top", "bottom"};
  const char* cols[] = {"far left", "left", "right", "far right"};
  for (int i = 0; i < 8; ++i) {
    RawImage im;
    im.width = im.height = 16;
    im.channels = 1;
    im.pixels.assign(16 * 16, 20);
    const int y0 = (i / 4) * 8, x0 = (i % 4) * 4;
    for (int y = y0; y < y0 + 8; ++y) {
      for (int x = x0; x < x0 + 4; ++x) im.pixels[y * 16 + x] = 235;
    }
    absl::StatusOr<std::string> png = EncodePng(im);
    EXPECT_TRUE(png.ok());
    const std::string name = absl::StrCat("img", i, ".png");
    std::ofstream(path + "/" + name, std::ios::binary) << *png;
    meta << "{\"file_name\": \"" << name << "\", \"text\": \"a square at the " << rows[i / 4] << " "
         << cols[i % 4] << "\"}\n";
  }
  return path;
}

TrainOptions TinyOptions(const std::string& dataset, int image_size) {
  TrainOptions o;
  o.job_id = "test";
  o.kind = ModelKind::kImage;
  o.dataset_path = dataset;
  DiffusionConfig& c = o.diffusion;
  c.image_size = image_size;
  c.channels = 1;
  c.unet_widths = {16, 32};
  c.res_blocks = 1;
  c.attention_levels = {1};
  c.attention_heads = 2;
  c.groups = 8;
  c.vocab_size = 300;  // an upper bound: the captions' tokenizer gets what it can
  c.text_dim = 32;
  c.text_layers = 1;
  c.text_heads = 2;
  c.text_seq_len = 12;
  c.diffusion_steps = 1000;
  c.default_steps = 4;  // evaluation samples with 4 DDIM steps
  Hyperparams& h = o.hyper;
  h.steps = 60;
  h.batch_size = 8;
  h.grad_accum = 1;
  h.lr = 3e-3;
  h.min_lr = 3e-4;
  h.warmup_steps = 5;
  h.weight_decay = 0.01;
  h.seed = 5;
  h.caption_dropout = 0.1;
  h.holdout_fraction = 0;  // train and evaluate on all 8
  o.keep_checkpoints = 2;
  return o;
}

// Runs micro-steps until `steps` more optimizer steps are done; returns their losses.
std::vector<double> Train(Trainer* trainer, int steps) {
  std::vector<double> losses;
  while (static_cast<int>(losses.size()) < steps) {
    absl::StatusOr<std::optional<StepMetrics>> m = trainer->MicroStep();
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) break;
    if (m->has_value()) {
      EXPECT_EQ((*m)->step, trainer->step());
      EXPECT_EQ((*m)->images,
                int64_t{trainer->options().hyper.batch_size} * trainer->options().hyper.grad_accum);
      EXPECT_GT((*m)->lr, 0);
      EXPECT_GT((*m)->grad_norm, 0);
      losses.push_back((*m)->loss);
    }
  }
  return losses;
}

std::unique_ptr<Trainer> MakeTrainer(const TrainOptions& options, const std::string& work,
                                     const std::string& checkpoints, std::string* note = nullptr) {
  std::string ignored;
  absl::StatusOr<std::unique_ptr<Trainer>> trainer =
      CreateImageTrainer(options, work, checkpoints, note ? note : &ignored);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  return trainer.ok() ? *std::move(trainer) : nullptr;
}

double Mean(const std::vector<double>& v, size_t from, size_t to) {
  return std::accumulate(v.begin() + from, v.begin() + to, 0.0) / static_cast<double>(to - from);
}

// Overfitting 8 images: the loss falls well below where it starts; then the model exports as a
// servable directory and evaluation draws a grid of its samples.
TEST(ImageTrainerTest, LossFallsOnTinyFolderAndExports) {
  TempDir dir("image_trainer_overfit");
  const TrainOptions options = TinyOptions(WriteTinyFolder(dir), 16);
  std::unique_ptr<Trainer> trainer = MakeTrainer(options, dir / "work", dir / "ckpt");
  ASSERT_NE(trainer, nullptr);
  EXPECT_TRUE(fs::exists(dir / "work/tokenizer.model"));
  const std::vector<double> losses = Train(trainer.get(), 60);
  ASSERT_EQ(losses.size(), 60u);
  const double first = Mean(losses, 0, 5), last = Mean(losses, 50, 60);
  EXPECT_LT(last, 0.5 * first) << "first 5 steps " << first << ", last 10 " << last;
  EXPECT_EQ(trainer->MicroStep().status().code(), absl::StatusCode::kFailedPrecondition);

  absl::StatusOr<EvalMetrics> eval = trainer->Evaluate();
  ASSERT_TRUE(eval.ok()) << eval.status();
  EXPECT_EQ(eval->step, 60);
  EXPECT_TRUE(std::isfinite(eval->loss));
  EXPECT_LT(eval->loss, first);
  absl::StatusOr<RawImage> grid = DecodePng(eval->image_png);
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->width, 4 * 16);  // 8 samples, 4 a row
  EXPECT_EQ(grid->height, 2 * 16);

  ModelProvenance prov;
  prov.source = "train job test";
  prov.train_step = trainer->step();
  ASSERT_TRUE(trainer->ExportModel(dir / "model", prov).ok());
  EXPECT_EQ(trainer->ExportModel(dir / "model", prov).code(), absl::StatusCode::kAlreadyExists);
  absl::StatusOr<ModelDir> model_dir = ReadModelDir(dir / "model");
  ASSERT_TRUE(model_dir.ok()) << model_dir.status();
  EXPECT_EQ(model_dir->kind, ModelKind::kImage);
  absl::StatusOr<SafetensorsFile> weights = ReadSafetensors(model_dir->weights_path());
  ASSERT_TRUE(weights.ok());
  EXPECT_TRUE(CreateDiffusionModel(model_dir->diffusion, weights->tensors, {}).ok());

  // Fine-tuning from the export: its tokenizer, its weights. Step 1 draws the very batch and
  // noise of the first run's step 1, which the trained weights fit far better.
  TrainOptions tuned = options;
  tuned.init_from_dir = dir / "model";
  tuned.hyper.steps = 1;
  std::unique_ptr<Trainer> again = MakeTrainer(tuned, dir / "work2", dir / "ckpt2");
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(ReadFile(dir / "work2/tokenizer.model").value(),
            ReadFile(dir / "model/tokenizer.model").value());
  const std::vector<double> tuned_losses = Train(again.get(), 1);
  ASSERT_EQ(tuned_losses.size(), 1u);
  EXPECT_LT(tuned_losses[0], 0.5 * losses[0]);
}

// Training 6 steps straight gives exactly the losses of 3 steps, a checkpoint, a new trainer
// restored from it, and 3 more steps (v-prediction, gradient accumulation).
TEST(ImageTrainerTest, RestoredRunContinuesWithEqualLosses) {
  TempDir dir("image_trainer_restore");
  TrainOptions options = TinyOptions(WriteTinyFolder(dir), 16);
  options.hyper.steps = 6;
  options.hyper.batch_size = 3;
  options.hyper.grad_accum = 2;
  options.hyper.warmup_steps = 2;
  options.keep_checkpoints = 1;
  options.diffusion.prediction = "v";  // the v target (the other tests train eps)
  // Both runs share the work dir, so the second reuses the tokenizer the first trained.
  std::vector<double> straight;
  {
    std::unique_ptr<Trainer> trainer = MakeTrainer(options, dir / "work", dir / "ckpt_a");
    ASSERT_NE(trainer, nullptr);
    straight = Train(trainer.get(), 6);
  }
  std::vector<double> resumed;
  {
    std::unique_ptr<Trainer> trainer = MakeTrainer(options, dir / "work", dir / "ckpt_b");
    ASSERT_NE(trainer, nullptr);
    resumed = Train(trainer.get(), 3);
    ASSERT_TRUE(trainer->SaveCheckpoint(dir / "ckpt_b").ok());
    // A half-accumulated step cannot be checkpointed; the trainer is then dropped mid-step.
    ASSERT_TRUE(trainer->MicroStep().ok());
    EXPECT_EQ(trainer->SaveCheckpoint(dir / "ckpt_b").code(),
              absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_EQ(ListCheckpointSteps(dir / "ckpt_b"), std::vector<int64_t>{3});
  std::string note;
  std::unique_ptr<Trainer> trainer = MakeTrainer(options, dir / "work", dir / "ckpt_b", &note);
  ASSERT_NE(trainer, nullptr);
  EXPECT_EQ(trainer->step(), 3);
  EXPECT_NE(note.find("step 3"), std::string::npos) << note;
  const std::vector<double> rest = Train(trainer.get(), 3);
  resumed.insert(resumed.end(), rest.begin(), rest.end());
  ASSERT_EQ(straight.size(), 6u);
  ASSERT_EQ(resumed.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(resumed[i], straight[i]) << "step " << i + 1;

  // Checkpoints beyond keep_checkpoints are pruned.
  ASSERT_TRUE(trainer->SaveCheckpoint(dir / "ckpt_b").ok());
  EXPECT_EQ(ListCheckpointSteps(dir / "ckpt_b"), std::vector<int64_t>{6});
}

// A run keeping an average of its weights (ema_decay) and weighting its loss by min-SNR-gamma:
// the weighting changes the losses, a resumed run reproduces the straight one exactly (the
// average travels in the checkpoint), and what is exported is the average, not the last weights.
TEST(ImageTrainerTest, EmaAndMinSnrResumeExactlyAndExportTheAverage) {
  TempDir dir("image_trainer_ema");
  TrainOptions options = TinyOptions(WriteTinyFolder(dir), 16);
  options.hyper.steps = 6;
  options.hyper.batch_size = 4;
  options.hyper.warmup_steps = 2;
  options.keep_checkpoints = 1;
  std::vector<double> plain;
  {
    std::unique_ptr<Trainer> trainer = MakeTrainer(options, dir / "work", dir / "ckpt_p");
    ASSERT_NE(trainer, nullptr);
    plain = Train(trainer.get(), 2);
  }
  options.hyper.ema_decay = 0.9;
  options.hyper.min_snr_gamma = 5;
  std::vector<double> straight;
  TensorMap straight_export;
  {
    std::unique_ptr<Trainer> trainer = MakeTrainer(options, dir / "work", dir / "ckpt_a");
    ASSERT_NE(trainer, nullptr);
    straight = Train(trainer.get(), 6);
    absl::StatusOr<TrainSnapshot> snap = trainer->Snapshot();
    ASSERT_TRUE(snap.ok()) << snap.status();
    ASSERT_FALSE(snap->serving.empty());
    ASSERT_TRUE(trainer->ExportModel(dir / "model_a", {}).ok());
    straight_export = ReadSafetensors(dir / "model_a/model.safetensors").value().tensors;
    // The export is the average: equal to the snapshot's serving weights, not its last ones.
    int differ = 0;
    for (const auto& [name, t] : snap->serving) {
      EXPECT_EQ(straight_export.at(name).bytes, t.bytes) << name;
      differ += snap->model.at(name).bytes != t.bytes;
    }
    EXPECT_GT(differ, 0);
  }
  ASSERT_EQ(straight.size(), 6u);
  // Same batches and noise as the plain run (same seed): only the weighting differs.
  EXPECT_NE(straight[0], plain[0]);

  std::vector<double> resumed;
  {
    std::unique_ptr<Trainer> trainer = MakeTrainer(options, dir / "work", dir / "ckpt_b");
    ASSERT_NE(trainer, nullptr);
    resumed = Train(trainer.get(), 3);
    ASSERT_TRUE(trainer->SaveCheckpoint(dir / "ckpt_b").ok());
  }
  std::unique_ptr<Trainer> trainer = MakeTrainer(options, dir / "work", dir / "ckpt_b");
  ASSERT_NE(trainer, nullptr);
  ASSERT_EQ(trainer->step(), 3);
  const std::vector<double> rest = Train(trainer.get(), 3);
  resumed.insert(resumed.end(), rest.begin(), rest.end());
  ASSERT_EQ(resumed.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(resumed[i], straight[i]) << "step " << i + 1;
  ASSERT_TRUE(trainer->ExportModel(dir / "model_b", {}).ok());
  const TensorMap resumed_export = ReadSafetensors(dir / "model_b/model.safetensors").value().tensors;
  for (const auto& [name, t] : straight_export) {
    EXPECT_EQ(resumed_export.at(name).bytes, t.bytes) << name << ": the average resumed exactly";
  }
}

// Evaluation on Fashion-MNIST: held-out MSE on fixed noise (the same twice), and a grid of one
// sample per class through the serving path.
TEST(ImageTrainerTest, EvaluatesFashionMnist) {
  if (!fs::exists(fs::path(kFashionMnist) / "train-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "no Fashion-MNIST at " << kFashionMnist;
  }
  TempDir dir("image_trainer_fashion");
  TrainOptions options = TinyOptions(kFashionMnist, 28);
  options.hyper.steps = 2;
  options.hyper.batch_size = 4;
  std::unique_ptr<Trainer> trainer = MakeTrainer(options, dir / "work", "");
  ASSERT_NE(trainer, nullptr);
  ASSERT_EQ(Train(trainer.get(), 2).size(), 2u);
  absl::StatusOr<EvalMetrics> a = trainer->Evaluate();
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<EvalMetrics> b = trainer->Evaluate();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->loss, b->loss);
  EXPECT_GT(a->loss, 0);
  EXPECT_EQ(a->image_png, b->image_png);
  absl::StatusOr<RawImage> grid = DecodePng(a->image_png);
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->width, 5 * 28);  // ten classes, five a row
  EXPECT_EQ(grid->height, 2 * 28);
  EXPECT_EQ(grid->channels, 1);
}

TEST(ImageTrainerTest, RejectsMismatchedImages) {
  TempDir dir("image_trainer_mismatch");
  const TrainOptions options = TinyOptions(WriteTinyFolder(dir), 28);  // images are 16x16
  std::string note;
  EXPECT_EQ(CreateImageTrainer(options, dir / "work", dir / "ckpt", &note).status().code(),
            absl::StatusCode::kInvalidArgument);
  TrainOptions missing = TinyOptions(dir / "nothing_here", 16);
  EXPECT_EQ(CreateImageTrainer(missing, dir / "work2", dir / "ckpt", &note).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Chunks: a micro-batch cut into chunks trains (within float rounding) as the whole one, and
// evaluation in units of a few images gives the whole evaluation's noise MSE.
TEST(ImageTrainerChunksTest, ChunksEqualTheWholeMicroBatchAndChunkedEvaluationTheWhole) {
  TempDir dir("image_chunks");
  TrainOptions options = TinyOptions(WriteTinyFolder(dir), 16);
  options.hyper.steps = 4;
  options.hyper.batch_size = 6;
  TrainOptions chunked = options;
  chunked.hyper.chunk_rows = 4;  // chunks of 4 and 2
  std::unique_ptr<Trainer> whole = MakeTrainer(options, dir / "work", "");
  std::unique_ptr<Trainer> parts = MakeTrainer(chunked, dir / "work", "");
  ASSERT_TRUE(whole && parts);
  EXPECT_EQ(parts->chunk_rows(), 4);
  // At step 0 the weights are the same: the evaluations must agree.
  auto held_out = [](Trainer* t) {
    t->StartEvaluation();
    while (true) {
      absl::StatusOr<std::optional<EvalMetrics>> m = t->RunEvalChunk();
      EXPECT_TRUE(m.ok()) << m.status();
      if (!m.ok() || m->has_value()) return m.ok() ? (*m)->loss : -1.0;
    }
  };
  const double a = held_out(whole.get());
  const double b = held_out(parts.get());
  EXPECT_NEAR(b, a, 1e-5 * a);
  const std::vector<double> la = Train(whole.get(), 4);
  const std::vector<double> lb = Train(parts.get(), 4);
  ASSERT_EQ(la.size(), 4u);
  ASSERT_EQ(lb.size(), 4u);
  for (size_t i = 0; i < la.size(); ++i) EXPECT_NEAR(lb[i], la[i], 1e-4 * la[i]) << i;
}

}  // namespace
}  // namespace tandem

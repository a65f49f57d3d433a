// The diffusion trainer: the text encoder and U-Net (DiffusionTrainNet) trained together on the
// noise-prediction loss of the cosine schedule. A micro-batch draws images and caption phrasings
// from the training split, replaces each caption by the empty one with probability
// hyper.caption_dropout (so classifier-free guidance works), draws timesteps t ~ U[0, T) and
// noise eps ~ N(0, I), forms x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps (pixels in [-1, 1]) and
// regresses the prediction on eps, or on v = sqrt(ab_t) eps - sqrt(1 - ab_t) x_0, with MSE.
// AdamW with warmup + cosine decay, global-norm clipping, gradient accumulation. Evaluation:
// the held-out noise MSE on fixed images, timesteps and noise, and a PNG grid of samples drawn
// through the serving path (CreateDiffusionModel, DDIM with guidance).
//
// Datasets: a Fashion-MNIST IDX folder (train split for training, test split held out) or an
// image folder with metadata.jsonl (every round(1 / holdout_fraction)-th image held out).
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "models/diffusion/diffusion_config.h"
#include "models/diffusion/diffusion_schedule.h"
#include "models/diffusion/diffusion_train_net.h"
#include "trainer/data/image_dataset.h"
#include "models/image_model.h"
#include "models/model_dir.h"
#include "models/formats/png.h"
#include "models/text/tokenizer.h"
#include "models/torch/torch_util.h"
#include "trainer/adamw.h"
#include "trainer/checkpoint.h"
#include "trainer/job_tokenizer.h"
#include "trainer/seeds.h"
#include "trainer/train_common.h"
#include "trainer/trainer.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using torch_util::CatchTorch;

// Seed streams (see trainer/seeds.h).
constexpr uint64_t kDataStream = 1;   // images, caption phrasings, caption dropout
constexpr uint64_t kNoiseStream = 2;  // timesteps and noise
constexpr uint64_t kEvalStream = 3;   // held-out timesteps and noise (the same at every eval)

constexpr int64_t kEvalImages = 256;  // held-out images per evaluation
constexpr int kSampleSteps = 20;      // DDIM steps of the evaluation samples at most
constexpr int kFolderSamples = 8;     // samples in the grid of an image-folder job

// The images of a job: the training split and the held-out split, as indices into datasets.
struct ImageData {
  std::shared_ptr<const ImageDataset> train_set, heldout_set;
  std::vector<int64_t> train, heldout;
  bool fashion_mnist = false;
};

absl::StatusOr<ImageData> LoadImageData(const std::string& path, double holdout_fraction) {
  ImageData d;
  std::error_code ec;
  if (fs::exists(fs::path(path) / "metadata.jsonl", ec)) {
    absl::StatusOr<std::unique_ptr<ImageDataset>> set = LoadImageFolder(path);
    if (!set.ok()) return set.status();
    d.train_set = d.heldout_set = std::shared_ptr<const ImageDataset>(*std::move(set));
    // Every k-th image held out (deterministic, spread over the folder).
    const int64_t k =
        holdout_fraction > 0 ? std::max<int64_t>(2, std::llround(1.0 / holdout_fraction)) : 0;
    for (int64_t i = 0; i < d.train_set->size(); ++i) {
      (k > 0 && i % k == k - 1 ? d.heldout : d.train).push_back(i);
    }
    if (d.train.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": no images left to train on"));
    }
    if (d.heldout.empty()) d.heldout = d.train;  // too small to hold any out: evaluate on train
    return d;
  }
  if (!fs::exists(fs::path(path) / "train-images-idx3-ubyte.gz", ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset ", path,
                     " is neither an image folder (metadata.jsonl beside the images) nor "
                     "Fashion-MNIST (train-images-idx3-ubyte.gz, ...)"));
  }
  absl::StatusOr<std::unique_ptr<ImageDataset>> train = LoadFashionMnist(path, "train");
  if (!train.ok()) return train.status();
  absl::StatusOr<std::unique_ptr<ImageDataset>> test = LoadFashionMnist(path, "test");
  if (!test.ok()) return test.status();
  d.train_set = *std::move(train);
  d.heldout_set = *std::move(test);
  d.train.resize(d.train_set->size());
  d.heldout.resize(d.heldout_set->size());
  for (size_t i = 0; i < d.train.size(); ++i) d.train[i] = static_cast<int64_t>(i);
  for (size_t i = 0; i < d.heldout.size(); ++i) d.heldout[i] = static_cast<int64_t>(i);
  d.fashion_mnist = true;
  return d;
}

// The captions the tokenizer is trained on: every phrasing of every Fashion-MNIST class, or the
// captions of the folder's training images; one a line.
absl::Status WriteCaptionCorpus(const ImageData& data, const std::string& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (data.fashion_mnist) {
    for (int label = 0; label < static_cast<int>(FashionMnistClasses().size()); ++label) {
      for (uint64_t variant = 0; variant < 16; ++variant) {
        out << FashionMnistCaption(label, variant) << "\n";
      }
    }
  } else {
    for (int64_t i : data.train) {
      out << absl::StrReplaceAll(data.train_set->Get(i, 0).caption, {{"\n", " "}, {"\r", " "}})
          << "\n";
    }
  }
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// A micro-batch on the CPU.
struct Batch {
  torch::Tensor x0;   // [B, C, H, W] float32 in [-1, 1]
  torch::Tensor ids;  // [B, L] int64 (DiffusionTrainNet::CaptionIds)
};

class ImageTrainer : public Trainer {
 public:
  ImageTrainer(TrainOptions options, DiffusionConfig config, std::unique_ptr<Tokenizer> tokenizer,
               ImageData data, std::unique_ptr<DiffusionTrainNet> net,
               std::unique_ptr<AdamW> optimizer, int64_t step)
      : options_(std::move(options)),
        config_(std::move(config)),
        tokenizer_(std::move(tokenizer)),
        data_(std::move(data)),
        net_(std::move(net)),
        optimizer_(std::move(optimizer)),
        step_(step) {
    // sqrt(ab_t) and sqrt(1 - ab_t), from the float64 schedule.
    const std::vector<double> ab = CosineAlphaBar(config_.diffusion_steps);
    std::vector<double> s(ab.size()), r(ab.size());
    for (size_t i = 0; i < ab.size(); ++i) {
      s[i] = std::sqrt(ab[i]);
      r[i] = std::sqrt(1.0 - ab[i]);
    }
    sqrt_ab_ = torch::tensor(s, torch::kFloat64).to(torch::kFloat32).to(net_->device());    // [T]
    sqrt_1mab_ = torch::tensor(r, torch::kFloat64).to(torch::kFloat32).to(net_->device());  // [T]
  }

  int64_t step() const override { return step_; }
  int64_t total_steps() const override { return options_.hyper.steps; }
  const TrainOptions& options() const override { return options_; }
  bool at_step_boundary() const override { return accumulator_.at_step_boundary(); }
  int64_t parameter_count() const override { return net_->parameter_count(); }

  absl::StatusOr<std::optional<StepMetrics>> MicroStep() override {
    if (step_ >= options_.hyper.steps) {
      return absl::FailedPreconditionError("training is complete");
    }
    return CatchTorch("image training step", [&]() -> absl::StatusOr<std::optional<StepMetrics>> {
      const Hyperparams& h = options_.hyper;
      const int64_t b = h.batch_size;
      // Images, phrasings and dropout from the data stream; t and noise from the noise stream.
      const int64_t micro = accumulator_.micro();
      SeededRandom rng(DeriveSeed(h.seed, kDataStream, step_, micro));
      std::vector<int64_t> indices(b);
      std::vector<uint64_t> variants(b);
      std::vector<bool> drop(b);
      for (int64_t i = 0; i < b; ++i) {
        indices[i] = data_.train[rng.Below(static_cast<int64_t>(data_.train.size()))];
        variants[i] = rng.Next();
        drop[i] = rng.Uniform() < h.caption_dropout;
      }
      at::Generator gen =
          at::detail::createCPUGenerator(DeriveSeed(h.seed, kNoiseStream, step_, micro));
      const torch::Tensor loss =
          Loss(MakeBatch(*data_.train_set, indices, variants, drop), gen);  // []
      absl::StatusOr<std::optional<StepMetrics>> m =
          accumulator_.Backward(loss, h, *optimizer_, &step_);
      if (m.ok() && m->has_value()) (*m)->images = b * h.grad_accum;
      return m;
    });
  }

  absl::StatusOr<EvalMetrics> Evaluate() override {
    return CatchTorch("image evaluation", [&]() -> absl::StatusOr<EvalMetrics> {
      EvalMetrics e;
      e.step = step_;
      {
        torch::NoGradGuard no_grad;
        // The first held-out images with fixed phrasings, timesteps and noise: evaluations at
        // different steps see the very same x_t.
        const int64_t n =
            std::min<int64_t>(kEvalImages, static_cast<int64_t>(data_.heldout.size()));
        // No gradients: far less memory a row than a training micro-batch, so larger batches.
        const int64_t rows = 4 * std::max(1, options_.hyper.batch_size);
        at::Generator gen =
            at::detail::createCPUGenerator(DeriveSeed(options_.hyper.seed, kEvalStream, 0, 0));
        double sum = 0;
        for (int64_t i0 = 0; i0 < n; i0 += rows) {
          const int64_t r = std::min(rows, n - i0);
          std::vector<int64_t> indices(data_.heldout.begin() + i0, data_.heldout.begin() + i0 + r);
          std::vector<uint64_t> variants(r);
          for (int64_t i = 0; i < r; ++i) variants[i] = static_cast<uint64_t>(i0 + i);
          const std::vector<bool> drop(r, false);
          sum += Loss(MakeBatch(*data_.heldout_set, indices, variants, drop), gen).item<double>() *
                 static_cast<double>(r);
        }
        e.loss = sum / static_cast<double>(std::max<int64_t>(1, n));
      }
      absl::StatusOr<std::string> png = SampleGrid();
      if (!png.ok()) return png.status();
      e.image_png = *std::move(png);
      return e;
    });
  }

  absl::Status SaveCheckpoint(const std::string& checkpoints_dir) override {
    if (!at_step_boundary()) {
      return absl::FailedPreconditionError("a checkpoint needs a step boundary");
    }
    const Hyperparams& h = options_.hyper;
    return SaveTrainingCheckpoint(
        checkpoints_dir, step_, [&] { return net_->ExportWeights(); }, *optimizer_,
        {{"kind", "image"},
         {"seed", absl::StrCat(h.seed)},
         {"step", absl::StrCat(step_)},
         // Every draw of a micro-step is a function of (seed, step, micro-step).
         {"data_position", absl::StrCat("step ", step_, " of a counter-based stream")},
         {"images_seen", absl::StrCat(step_ * h.grad_accum * h.batch_size)},
         {"config", config_.ToJson()}},
        options_.keep_checkpoints);
  }

  absl::Status ExportModel(const std::string& dir, const ModelProvenance& provenance) override {
    std::error_code ec;
    if (fs::exists(dir, ec)) return absl::AlreadyExistsError(absl::StrCat(dir, " already exists"));
    SafetensorsFile weights;
    absl::Status s = CatchTorch("image export", [&]() -> absl::Status {
      weights.tensors = net_->ExportWeights();
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    weights.metadata["format"] = "pt";
    weights.metadata["tandem.config"] = config_.ToJson();
    return WriteImageModelDir(dir, config_, weights, tokenizer_->Serialized(), provenance);
  }

 private:
  // Token ids of a caption (without BOS), cached: captions repeat (phrasings of classes).
  const std::vector<int32_t>& CaptionTokens(const std::string& caption) {
    auto it = caption_tokens_.find(caption);
    if (it == caption_tokens_.end()) {
      it = caption_tokens_.emplace(caption, tokenizer_->Encode(caption)).first;
    }
    return it->second;
  }

  // The listed images of `set` with caption phrasing variants[i], or the empty caption where
  // drop[i].
  Batch MakeBatch(const ImageDataset& set, const std::vector<int64_t>& indices,
                  const std::vector<uint64_t>& variants, const std::vector<bool>& drop) {
    const int64_t b = static_cast<int64_t>(indices.size());
    const int64_t c = config_.channels, s = config_.image_size;
    torch::Tensor pixels = torch::empty({b, s, s, c}, torch::kUInt8);  // [B, H, W, C]
    uint8_t* p = pixels.data_ptr<uint8_t>();
    std::vector<std::vector<int32_t>> captions(b);
    for (int64_t i = 0; i < b; ++i) {
      const CaptionedImage item = set.Get(indices[i], variants[i]);
      std::copy(item.image.pixels.begin(), item.image.pixels.end(), p + i * s * s * c);
      if (!drop[i]) captions[i] = CaptionTokens(item.caption);
    }
    Batch batch;
    batch.x0 = pixels.permute({0, 3, 1, 2})
                   .to(torch::kFloat32)
                   .div_(127.5)
                   .sub_(1.0)
                   .contiguous();  // [B, C, H, W] in [-1, 1]
    batch.ids = DiffusionTrainNet::CaptionIds(captions, config_.text_seq_len);  // [B, L]
    return batch;
  }

  // The mean noise-prediction MSE of a batch at timesteps and noise drawn from gen (t first,
  // then eps; on the CPU, then moved to the device).
  torch::Tensor Loss(const Batch& batch, at::Generator& gen) {
    const int64_t b = batch.x0.size(0);
    const torch::Device device = net_->device();
    const torch::Tensor t = at::randint(config_.diffusion_steps, {b}, gen,
                                        torch::TensorOptions().dtype(torch::kInt64))
                                .to(device);  // [B]
    const torch::Tensor eps =
        at::randn(batch.x0.sizes(), gen, torch::TensorOptions().dtype(torch::kFloat32))
            .to(device);                                                        // [B, C, H, W]
    const torch::Tensor x0 = batch.x0.to(device);                               // [B, C, H, W]
    const torch::Tensor sa = sqrt_ab_.index_select(0, t).view({b, 1, 1, 1});    // [B, 1, 1, 1]
    const torch::Tensor sr = sqrt_1mab_.index_select(0, t).view({b, 1, 1, 1});  // [B, 1, 1, 1]
    const torch::Tensor x_t = sa * x0 + sr * eps;                               // [B, C, H, W]
    const torch::Tensor target = config_.prediction == "v" ? sa * eps - sr * x0 : eps;
    const torch::Tensor pred = net_->Forward(x_t, t, batch.ids.to(device));  // [B, C, H, W]
    return torch::mse_loss(pred, target);                                    // []
  }

  // Samples through the serving path from the current weights: one per Fashion-MNIST class
  // ("a photo of a t-shirt", ...), or the captions of the first held-out images of a folder;
  // DDIM with the config's default steps (kSampleSteps at most) and guidance, seeds 1, 2, ...;
  // tiled, PNG.
  absl::StatusOr<std::string> SampleGrid() {
    std::vector<std::string> captions;
    if (data_.fashion_mnist) {
      for (int label = 0; label < static_cast<int>(FashionMnistClasses().size()); ++label) {
        captions.push_back(FashionMnistCaption(label, 0));
      }
    } else {
      const size_t n = std::min<size_t>(kFolderSamples, data_.heldout.size());
      for (size_t i = 0; i < n; ++i) {
        captions.push_back(data_.heldout_set->Get(data_.heldout[i], 0).caption);
      }
    }
    const int n = static_cast<int>(captions.size());
    ImageModelOptions mo;
    mo.device = net_->device().str();
    mo.max_samples = n;
    absl::StatusOr<std::unique_ptr<ImageModel>> model =
        CreateDiffusionModel(config_, net_->ExportWeights(), mo);
    if (!model.ok()) return model.status();
    std::vector<int> samples;
    for (int i = 0; i < n; ++i) {
      ImageSampleSpec spec;
      spec.caption = CaptionTokens(captions[i]);
      spec.steps = std::min({kSampleSteps, config_.default_steps, config_.diffusion_steps});
      spec.guidance = config_.default_guidance;
      spec.sampler = DiffusionSampler::kDdim;
      spec.seed = static_cast<uint64_t>(i) + 1;
      absl::StatusOr<int> sample = (*model)->StartSample(spec);
      if (!sample.ok()) return sample.status();
      samples.push_back(*sample);
    }
    for (int k = 0; k < (*model)->TotalSteps(samples[0]); ++k) {
      if (absl::Status s = (*model)->Step(samples); !s.ok()) return s;
    }
    std::vector<RawImage> images;
    for (int sample : samples) {
      RawImage image;
      image.width = image.height = config_.image_size;
      image.channels = config_.channels;
      if (absl::Status s = (*model)->Pixels(sample, &image.pixels); !s.ok()) return s;
      images.push_back(std::move(image));
    }
    absl::StatusOr<RawImage> grid = TileImages(images, data_.fashion_mnist ? 5 : std::min(n, 4));
    if (!grid.ok()) return grid.status();
    return EncodePng(*grid);
  }

  const TrainOptions options_;
  const DiffusionConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  const ImageData data_;
  std::unique_ptr<DiffusionTrainNet> net_;
  std::unique_ptr<AdamW> optimizer_;
  torch::Tensor sqrt_ab_, sqrt_1mab_;  // [T] float32 on the device
  std::unordered_map<std::string, std::vector<int32_t>> caption_tokens_;
  int64_t step_ = 0;
  GradientAccumulator accumulator_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Trainer>> CreateImageTrainer(const TrainOptions& options,
                                                            const std::string& work_dir,
                                                            const std::string& checkpoints_dir,
                                                            std::string* restored_note) {
  absl::StatusOr<ImageData> data =
      LoadImageData(options.dataset_path, options.hyper.holdout_fraction);
  if (!data.ok()) return data.status();
  // The model: init_from's config and weights, or options.diffusion with fresh weights (drawn
  // below, once the tokenizer fixes the vocabulary).
  DiffusionConfig config = options.diffusion;
  TensorMap init_weights;
  if (!options.init_from_dir.empty()) {
    absl::StatusOr<ModelDir> dir =
        ReadInitModel(options.init_from_dir, ModelKind::kImage, &init_weights);
    if (!dir.ok()) return dir.status();
    config = dir->diffusion;
  }
  // Captions are a small corpus: the vocabulary is an upper bound, not a target.
  TokenizerTrainOptions topts;
  topts.vocab_size = options.diffusion.vocab_size;
  topts.seed = options.hyper.seed;
  topts.hard_vocab_limit = false;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      JobTokenizer(work_dir, options.init_from_dir, topts,
                   [&](const std::string& path) { return WriteCaptionCorpus(*data, path); });
  if (!tokenizer.ok()) return tokenizer.status();
  if (init_weights.empty()) {
    config.vocab_size = (*tokenizer)->vocab_size();  // the embedding matches the tokenizer
  } else if (absl::Status s = CheckTokenizerFits(**tokenizer, config.vocab_size); !s.ok()) {
    return s;
  }
  if (absl::Status s = config.Normalize(); !s.ok()) return s;
  const ImageDataset& set = *data->train_set;
  if (set.width() != config.image_size || set.height() != config.image_size ||
      set.channels() != config.channels) {
    return absl::InvalidArgumentError(
        absl::StrCat("the dataset's images are ", set.width(), "x", set.height(), " with ",
                     set.channels(), " channel(s); the model takes ", config.image_size, "x",
                     config.image_size, " with ", config.channels));
  }

  absl::StatusOr<std::optional<Checkpoint>> restored =
      RestoreLatestCheckpoint(checkpoints_dir, restored_note);
  if (!restored.ok()) return restored.status();
  std::optional<Checkpoint>& ckpt = *restored;
  if (absl::Status s = CheckCheckpointModel(ckpt, "image", config.ToJson(), checkpoints_dir);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<TensorMap> weights = StartingWeights(
      &ckpt, &init_weights, [&] { return RandomDiffusionWeights(config, options.hyper.seed); });
  if (!weights.ok()) return weights.status();
  absl::StatusOr<std::unique_ptr<DiffusionTrainNet>> net =
      DiffusionTrainNet::Create(config, *weights, options.device);
  if (!net.ok()) return net.status();
  weights->clear();

  return CatchTorch("CreateImageTrainer", [&]() -> absl::StatusOr<std::unique_ptr<Trainer>> {
    absl::StatusOr<std::unique_ptr<AdamW>> optimizer =
        RestoreOptimizer((*net)->parameters(), options.hyper, ckpt);
    if (!optimizer.ok()) return optimizer.status();
    return std::unique_ptr<Trainer>(new ImageTrainer(options, config, *std::move(tokenizer),
                                                     *std::move(data), *std::move(net),
                                                     *std::move(optimizer), ckpt ? ckpt->step : 0));
  });
}

}  // namespace tandem

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
// image folder with metadata.jsonl (every round(1 / holdout_fraction)-th image held out): see
// trainer/data/image_data.h.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "models/diffusion/diffusion_config.h"
#include "models/diffusion/diffusion_schedule.h"
#include "models/diffusion/diffusion_train_net.h"
#include "models/formats/png.h"
#include "models/image_model.h"
#include "models/model_dir.h"
#include "models/text/tokenizer.h"
#include "models/torch/torch_util.h"
#include "trainer/data/image_data.h"
#include "trainer/data/image_dataset.h"
#include "trainer/job_tokenizer.h"
#include "trainer/seeds.h"
#include "trainer/train_common.h"
#include "trainer/trainer.h"

namespace tandem {
namespace {

using torch_util::CatchTorch;

// Seed streams (see trainer/seeds.h).
constexpr uint64_t kDataStream = 1;   // images, caption phrasings, caption dropout
constexpr uint64_t kNoiseStream = 2;  // timesteps and noise
constexpr uint64_t kEvalStream = 3;   // held-out timesteps and noise (the same at every eval)

constexpr int64_t kEvalImages = 256;  // held-out images per evaluation
constexpr int kSampleSteps = 20;      // DDIM steps of the evaluation samples at most
constexpr int kFolderSamples = 8;     // samples in the grid of an image-folder job

// A micro-batch on the CPU.
struct Batch {
  torch::Tensor x0;   // [B, C, H, W] float32 in [-1, 1]
  torch::Tensor ids;  // [B, L] int64 (DiffusionTrainNet::CaptionIds)
};

// What an image job trains on, prepared before its run starts.
struct ImageJob {
  DiffusionConfig config;  // normalized; vocab_size fitted to a freshly trained tokenizer
  std::unique_ptr<Tokenizer> tokenizer;
  ImageData data;
  TensorMap init_weights;  // init_from's weights, or empty
};

// INVALID_ARGUMENT unless the dataset's images have the model's size and channels.
absl::Status CheckImagesFit(const ImageDataset& set, const DiffusionConfig& config) {
  if (set.width() == config.image_size && set.height() == config.image_size &&
      set.channels() == config.channels) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("the dataset's images are ", set.width(), "x", set.height(), " with ",
                   set.channels(), " channel(s); the model takes ", config.image_size, "x",
                   config.image_size, " with ", config.channels));
}

// The dataset, the model (options.diffusion, or init_from's config and weights) and the job's
// tokenizer, trained on the captions unless init_from brings one; the images must fit the model.
absl::StatusOr<ImageJob> PrepareImageJob(const TrainOptions& options, const std::string& work_dir) {
  absl::StatusOr<ImageData> data =
      LoadImageData(options.dataset_path, options.hyper.holdout_fraction);
  if (!data.ok()) return data.status();
  ImageJob job;
  job.data = *std::move(data);
  job.config = options.diffusion;
  if (!options.init_from_dir.empty()) {
    absl::StatusOr<ModelDir> dir =
        ReadInitModel(options.init_from_dir, ModelKind::kImage, &job.init_weights);
    if (!dir.ok()) return dir.status();
    job.config = dir->diffusion;
  }
  // Captions are a small corpus: the vocabulary is an upper bound, not a target.
  TokenizerTrainOptions topts;
  topts.vocab_size = options.diffusion.vocab_size;
  topts.seed = options.hyper.seed;
  topts.hard_vocab_limit = false;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      JobTokenizer(work_dir, options.init_from_dir, topts,
                   [&](const std::string& path) { return WriteCaptionCorpus(job.data, path); });
  if (!tokenizer.ok()) return tokenizer.status();
  job.tokenizer = *std::move(tokenizer);
  if (job.init_weights.empty()) {
    job.config.vocab_size = job.tokenizer->vocab_size();  // the embedding matches the tokenizer
  } else if (absl::Status s = CheckTokenizerFits(*job.tokenizer, job.config.vocab_size); !s.ok()) {
    return s;
  }
  if (absl::Status s = job.config.Normalize(); !s.ok()) return s;
  if (absl::Status s = CheckImagesFit(*job.data.train_set, job.config); !s.ok()) return s;
  return job;
}

class ImageTrainer final : public NetTrainer {
 public:
  ImageTrainer(TrainOptions options, ImageJob job, StartedNet<DiffusionTrainNet> started)
      : NetTrainer(std::move(options), "image", job.config.ToJson(), std::move(job.tokenizer),
                   std::move(started.optimizer), started.step),
        config_(std::move(job.config)),
        data_(std::move(job.data)),
        net_(std::move(started.net)) {
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

  int64_t parameter_count() const override { return net_->parameter_count(); }

 private:
  torch::Tensor MicroBatchLoss(int micro) override;
  void CountTrained(StepMetrics* m) const override {
    const Hyperparams& h = options().hyper;
    m->images = int64_t{h.batch_size} * h.grad_accum;
  }
  absl::Status EvaluateHeldOut(EvalMetrics* e) override;
  TensorMap ExportWeights() const override { return net_->ExportWeights(); }
  std::map<std::string, std::string> SeenState() const override {
    const Hyperparams& h = options().hyper;
    return {{"images_seen", absl::StrCat(step() * h.grad_accum * h.batch_size)}};
  }
  absl::Status WriteModelDir(const std::string& dir, SafetensorsFile weights,
                             const ModelProvenance& provenance) const override {
    weights.metadata["format"] = "pt";
    weights.metadata["tandem.config"] = config_.ToJson();
    return WriteImageModelDir(dir, config_, weights, tokenizer().Serialized(), provenance);
  }

  // The mean held-out noise MSE on the first held-out images with fixed phrasings, timesteps and
  // noise: evaluations at different steps see the very same x_t.
  double HeldOutLoss();

  // Token ids of a caption (without BOS), cached: captions repeat (phrasings of classes).
  const std::vector<int32_t>& CaptionTokens(const std::string& caption);
  // The listed images of `set` with caption phrasing variants[i], or the empty caption where
  // drop[i].
  Batch MakeBatch(const ImageDataset& set, const std::vector<int64_t>& indices,
                  const std::vector<uint64_t>& variants, const std::vector<bool>& drop);
  // The mean noise-prediction MSE [] of a batch at timesteps and noise drawn from gen (t first,
  // then eps; on the CPU, then moved to the device).
  torch::Tensor Loss(const Batch& batch, at::Generator& gen) const;
  // The captions of the evaluation grid: one per Fashion-MNIST class ("a photo of a t-shirt",
  // ...), or the captions of the first held-out images of a folder.
  std::vector<std::string> GridCaptions() const;
  // Samples through the serving path from the current weights, one per GridCaptions() caption:
  // DDIM with the config's default steps (kSampleSteps at most) and guidance, seeds 1, 2, ...;
  // tiled, PNG.
  absl::StatusOr<std::string> SampleGrid();

  const DiffusionConfig config_;
  const ImageData data_;
  std::unique_ptr<DiffusionTrainNet> net_;
  torch::Tensor sqrt_ab_, sqrt_1mab_;  // [T] float32 on the device
  std::unordered_map<std::string, std::vector<int32_t>> caption_tokens_;
};

torch::Tensor ImageTrainer::MicroBatchLoss(int micro) {
  const Hyperparams& h = options().hyper;
  const int64_t b = h.batch_size;
  // Images, phrasings and dropout from the data stream; t and noise from the noise stream.
  SeededRandom rng(DeriveSeed(h.seed, kDataStream, step(), micro));
  std::vector<int64_t> indices(b);
  std::vector<uint64_t> variants(b);
  std::vector<bool> drop(b);
  for (int64_t i = 0; i < b; ++i) {
    indices[i] = data_.train[rng.Below(static_cast<int64_t>(data_.train.size()))];
    variants[i] = rng.Next();
    drop[i] = rng.Uniform() < h.caption_dropout;
  }
  at::Generator gen =
      at::detail::createCPUGenerator(DeriveSeed(h.seed, kNoiseStream, step(), micro));
  return Loss(MakeBatch(*data_.train_set, indices, variants, drop), gen);  // []
}

absl::Status ImageTrainer::EvaluateHeldOut(EvalMetrics* e) {
  e->loss = HeldOutLoss();
  absl::StatusOr<std::string> png = SampleGrid();
  if (!png.ok()) return png.status();
  e->image_png = *std::move(png);
  return absl::OkStatus();
}

double ImageTrainer::HeldOutLoss() {
  torch::NoGradGuard no_grad;
  const int64_t n = std::min<int64_t>(kEvalImages, static_cast<int64_t>(data_.heldout.size()));
  // No gradients: far less memory a row than a training micro-batch, so larger batches.
  const int64_t rows = 4 * std::max(1, options().hyper.batch_size);
  at::Generator gen =
      at::detail::createCPUGenerator(DeriveSeed(options().hyper.seed, kEvalStream, 0, 0));
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
  return sum / static_cast<double>(std::max<int64_t>(1, n));
}

const std::vector<int32_t>& ImageTrainer::CaptionTokens(const std::string& caption) {
  auto it = caption_tokens_.find(caption);
  if (it == caption_tokens_.end()) {
    it = caption_tokens_.emplace(caption, tokenizer().Encode(caption)).first;
  }
  return it->second;
}

Batch ImageTrainer::MakeBatch(const ImageDataset& set, const std::vector<int64_t>& indices,
                              const std::vector<uint64_t>& variants,
                              const std::vector<bool>& drop) {
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

torch::Tensor ImageTrainer::Loss(const Batch& batch, at::Generator& gen) const {
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

std::vector<std::string> ImageTrainer::GridCaptions() const {
  std::vector<std::string> captions;
  if (data_.fashion_mnist) {
    for (int label = 0; label < static_cast<int>(FashionMnistClasses().size()); ++label) {
      captions.push_back(FashionMnistCaption(label, 0));
    }
    return captions;
  }
  const size_t n = std::min<size_t>(kFolderSamples, data_.heldout.size());
  for (size_t i = 0; i < n; ++i) {
    captions.push_back(data_.heldout_set->Get(data_.heldout[i], 0).caption);
  }
  return captions;
}

absl::StatusOr<std::string> ImageTrainer::SampleGrid() {
  const std::vector<std::string> captions = GridCaptions();
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

}  // namespace

absl::StatusOr<std::unique_ptr<Trainer>> CreateImageTrainer(const TrainOptions& options,
                                                            const std::string& work_dir,
                                                            const std::string& checkpoints_dir,
                                                            std::string* restored_note) {
  absl::StatusOr<ImageJob> job = PrepareImageJob(options, work_dir);
  if (!job.ok()) return job.status();
  const DiffusionConfig& config = job->config;
  ModelStart model{"image", config.ToJson(), std::move(job->init_weights),
                   [&] { return RandomDiffusionWeights(config, options.hyper.seed); }};
  absl::StatusOr<StartedNet<DiffusionTrainNet>> started = StartNet<DiffusionTrainNet>(
      std::move(model), options.hyper, checkpoints_dir, restored_note,
      [&](const TensorMap& weights) {
        return DiffusionTrainNet::Create(config, weights, options.device);
      });
  if (!started.ok()) return started.status();
  return CatchTorch("CreateImageTrainer", [&]() -> absl::StatusOr<std::unique_ptr<Trainer>> {
    return std::unique_ptr<Trainer>(
        new ImageTrainer(options, *std::move(job), *std::move(started)));
  });
}

}  // namespace tandem

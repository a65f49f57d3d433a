// The diffusion trainer: the text encoder and U-Net (DiffusionTrainNet) trained together on the
// noise-prediction loss of the cosine schedule. A micro-batch draws images and caption phrasings
// from the training split, replaces each caption by the empty one with probability
// hyper.caption_dropout (so classifier-free guidance works), draws timesteps t ~ U[0, T) and
// noise eps ~ N(0, I), forms x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps (pixels in [-1, 1]) and
// regresses the prediction on eps, or on v = sqrt(ab_t) eps - sqrt(1 - ab_t) x_0, with MSE.
// AdamW (or Muon) with warmup + cosine decay, global-norm clipping, gradient accumulation over
// chunks of a micro-batch (a micro-batch's images, captions, timesteps and noise are drawn
// whole, chunks slice them). Evaluation: the held-out noise MSE on fixed images, timesteps and
// noise, in chunks of images, and a grid of samples (EvalSamples: DDIM with guidance, one per
// class).
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

// A batch on the CPU, with its draws.
struct Batch {
  torch::Tensor x0;   // [B, C, H, W] float32 in [-1, 1]
  torch::Tensor ids;  // [B, L] int64 (DiffusionTrainNet::CaptionIds)
  torch::Tensor t;    // [B] int64 timesteps in [0, T)
  torch::Tensor eps;  // [B, C, H, W] float32 noise
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
      LoadImageData(options.dataset_path, options.hyper.holdout_fraction, options.dataset_root);
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
                   std::move(started.optimizer), std::move(started.ema), started.step),
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
  void DrawMicroBatch(int micro) override;
  torch::Tensor ChunkLoss(int64_t row, int64_t rows) override;
  void CountTrained(StepMetrics* m) const override {
    const Hyperparams& h = options().hyper;
    m->images = int64_t{h.batch_size} * h.grad_accum;
  }
  // No gradients: far less memory a row than a training chunk, so larger units.
  int64_t EvalRows() const override { return 4 * int64_t{chunk_rows()}; }
  int64_t BeginHeldOut(int64_t rows) override;
  double HeldOutUnit(int64_t unit) override;
  void FinishHeldOut(double sum, EvalMetrics* e) const override {
    e->loss = sum / static_cast<double>(std::max<int64_t>(1, eval_.x0.numel()));
  }
  TensorMap ExportWeights() const override { return net_->ExportWeights(); }
  std::map<std::string, std::string> SeenState() const override {
    const Hyperparams& h = options().hyper;
    return {{"images_seen", absl::StrCat(step() * h.grad_accum * h.batch_size)}};
  }
  void DescribeModel(TrainSnapshot* s) const override {
    s->kind = ModelKind::kImage;
    s->diffusion = config_;
  }
  // One image per GridCaptions() caption: DDIM with the config's default steps (kSampleSteps
  // at most) and guidance, seeds 1, 2, ...
  EvalSamples Samples() const override;

  // Token ids of a caption (without BOS), cached: captions repeat (phrasings of classes).
  const std::vector<int32_t>& CaptionTokens(const std::string& caption) const;
  // The listed images of `set` with caption phrasing variants[i], or the empty caption where
  // drop[i]; then timesteps (first) and noise drawn from `gen`.
  Batch MakeBatch(const ImageDataset& set, const std::vector<int64_t>& indices,
                  const std::vector<uint64_t>& variants, const std::vector<bool>& drop,
                  at::Generator& gen) const;
  // The summed squared error [] of the noise (or v) prediction over rows [row, row + rows),
  // each row weighted by min(SNR, gamma) / SNR (eps) or / (SNR + 1) (v) when gamma > 0.
  torch::Tensor SquaredError(const Batch& batch, int64_t row, int64_t rows,
                             double min_snr_gamma) const;
  // The captions of the evaluation grid: one per Fashion-MNIST class ("a photo of a t-shirt",
  // ...), or the captions of the first held-out images of a folder.
  std::vector<std::string> GridCaptions() const;

  const DiffusionConfig config_;
  const ImageData data_;
  std::unique_ptr<DiffusionTrainNet> net_;
  torch::Tensor sqrt_ab_, sqrt_1mab_;  // [T] float32 on the device
  mutable std::unordered_map<std::string, std::vector<int32_t>> caption_tokens_;
  Batch batch_;  // the drawn micro-batch
  Batch eval_;   // the held-out images of an evaluation, with their fixed draws
  int64_t eval_rows_ = 0;
};

void ImageTrainer::DrawMicroBatch(int micro) {
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
  batch_ = MakeBatch(*data_.train_set, indices, variants, drop, gen);
}

torch::Tensor ImageTrainer::ChunkLoss(int64_t row, int64_t rows) {
  // The chunk's share of the micro-batch's mean over B * C * H * W elements (each row weighted
  // by min-SNR-gamma when the spec asks).
  return SquaredError(batch_, row, rows, options().hyper.min_snr_gamma) /
         static_cast<double>(batch_.x0.numel());  // []
}

int64_t ImageTrainer::BeginHeldOut(int64_t rows) {
  // The first held-out images with fixed phrasings, timesteps and noise: evaluations at
  // different steps, and with other unit sizes, see the very same x_t.
  const int64_t n = std::min<int64_t>(kEvalImages, static_cast<int64_t>(data_.heldout.size()));
  std::vector<int64_t> indices(data_.heldout.begin(), data_.heldout.begin() + n);
  std::vector<uint64_t> variants(n);
  for (int64_t i = 0; i < n; ++i) variants[i] = static_cast<uint64_t>(i);
  at::Generator gen =
      at::detail::createCPUGenerator(DeriveSeed(options().hyper.seed, kEvalStream, 0, 0));
  eval_ = MakeBatch(*data_.heldout_set, indices, variants, std::vector<bool>(n, false), gen);
  eval_rows_ = std::max<int64_t>(1, rows);
  return (n + eval_rows_ - 1) / eval_rows_;
}

double ImageTrainer::HeldOutUnit(int64_t unit) {
  const int64_t row = unit * eval_rows_;
  const int64_t rows = std::min(eval_rows_, eval_.x0.size(0) - row);
  return SquaredError(eval_, row, rows, /*min_snr_gamma=*/0).item<double>();
}

const std::vector<int32_t>& ImageTrainer::CaptionTokens(const std::string& caption) const {
  auto it = caption_tokens_.find(caption);
  if (it == caption_tokens_.end()) {
    it = caption_tokens_.emplace(caption, tokenizer().Encode(caption)).first;
  }
  return it->second;
}

Batch ImageTrainer::MakeBatch(const ImageDataset& set, const std::vector<int64_t>& indices,
                              const std::vector<uint64_t>& variants,
                              const std::vector<bool>& drop, at::Generator& gen) const {
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
  batch.t = at::randint(config_.diffusion_steps, {b}, gen,
                        torch::TensorOptions().dtype(torch::kInt64));  // [B]
  batch.eps = at::randn(batch.x0.sizes(), gen,
                        torch::TensorOptions().dtype(torch::kFloat32));  // [B, C, H, W]
  return batch;
}

torch::Tensor ImageTrainer::SquaredError(const Batch& batch, int64_t row, int64_t rows,
                                         double min_snr_gamma) const {
  const torch::Device device = net_->device();
  const torch::Tensor t = batch.t.narrow(0, row, rows).to(device);        // [R]
  const torch::Tensor eps = batch.eps.narrow(0, row, rows).to(device);    // [R, C, H, W]
  const torch::Tensor x0 = batch.x0.narrow(0, row, rows).to(device);      // [R, C, H, W]
  const torch::Tensor sa = sqrt_ab_.index_select(0, t).view({rows, 1, 1, 1});    // [R, 1, 1, 1]
  const torch::Tensor sr = sqrt_1mab_.index_select(0, t).view({rows, 1, 1, 1});  // [R, 1, 1, 1]
  const torch::Tensor x_t = sa * x0 + sr * eps;                                  // [R, C, H, W]
  const torch::Tensor target = config_.prediction == "v" ? sa * eps - sr * x0 : eps;
  const torch::Tensor pred =
      net_->Forward(x_t, t, batch.ids.narrow(0, row, rows).to(device));  // [R, C, H, W]
  if (min_snr_gamma <= 0) return torch::mse_loss(pred, target, at::Reduction::Sum);  // []
  const torch::Tensor snr = (sa * sa / (sr * sr)).view({rows});                      // [R]
  const torch::Tensor w = snr.clamp_max(min_snr_gamma) /
                          (config_.prediction == "v" ? snr + 1 : snr);               // [R]
  const torch::Tensor per_row =
      (pred - target).pow(2).flatten(1).sum(1);  // [R]
  return (w * per_row).sum();                    // []
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

EvalSamples ImageTrainer::Samples() const {
  EvalSamples out;
  const std::vector<std::string> captions = GridCaptions();
  for (size_t i = 0; i < captions.size(); ++i) {
    ImageSampleSpec spec;
    spec.caption = CaptionTokens(captions[i]);
    spec.steps = std::min({kSampleSteps, config_.default_steps, config_.diffusion_steps});
    spec.guidance = config_.default_guidance;
    spec.sampler = DiffusionSampler::kDdim;
    spec.seed = static_cast<uint64_t>(i) + 1;
    out.images.push_back(std::move(spec));
  }
  out.columns = data_.fashion_mnist ? 5 : std::min<int>(captions.size(), 4);
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Trainer>> CreateImageTrainer(const TrainOptions& job_options,
                                                            const std::string& work_dir,
                                                            const std::string& checkpoints_dir,
                                                            std::string* restored_note) {
  const TrainOptions options = ResolvePrecision(job_options);
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

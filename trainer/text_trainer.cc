// The LLM trainer: next-token cross-entropy on packed token windows drawn from the training
// documents, AdamW (or Muon) with warmup + cosine decay, global-norm clipping, gradient
// accumulation over chunks of a micro-batch (the skeleton in train_common.h); held-out bits per
// byte, evaluated in chunks of windows, and a text sample at each evaluation.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "models/llama/llama.h"
#include "models/llama/llama_train_net.h"
#include "models/model_dir.h"
#include "models/text/sampler.h"
#include "models/text/tokenizer.h"
#include "models/torch/torch_util.h"
#include "trainer/data/text_dataset.h"
#include "trainer/job_tokenizer.h"
#include "trainer/seeds.h"
#include "trainer/train_common.h"
#include "trainer/trainer.h"

namespace tandem {
namespace {

using torch_util::CatchTorch;

// Seed streams (see trainer/seeds.h).
constexpr uint64_t kDataStream = 1;
constexpr uint64_t kDropoutStream = 2;
constexpr uint64_t kSampleStream = 3;

// One row's dropout multipliers (LlamaTrainNet::Forward): each of the n floats is 0 with
// probability p (quantised to 1/65536) and else 1 / (1 - p), from SplitMix64 `seed`'s stream,
// four 16-bit uniforms a draw. A pure function of (seed, p, n): the row's masks are the same
// whatever chunk it is trained in.
void FillDropoutRow(uint64_t seed, double p, float* out, int64_t n) {
  const uint32_t cut = static_cast<uint32_t>(std::lround(p * 65536.0));
  const float keep = static_cast<float>(65536.0 / (65536.0 - cut));
  SeededRandom rng(seed);
  for (int64_t i = 0; i < n; i += 4) {
    uint64_t bits = rng.Next();
    for (int64_t k = i; k < std::min(n, i + 4); ++k, bits >>= 16) {
      out[k] = (bits & 0xFFFF) < cut ? 0.0f : keep;
    }
  }
}

// The evaluation's text sample: this many tokens at most, from BOS, temperature 0.8, top-k 40.
constexpr int kSampleTokens = 64;
constexpr float kSampleTemperature = 0.8f;
constexpr int kSampleTopK = 40;

// What a text job trains on, prepared before its run starts.
struct TextJob {
  LlamaConfig config;  // normalized
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<int32_t> train_tokens, heldout_tokens;  // the splits' documents, tokenized, packed
  int64_t heldout_bytes = 0;
  TensorMap init_weights;  // init_from's weights, or empty
};

// The corpus, the model (options.llama, or init_from's config and weights) and the job's
// tokenizer, trained on the training split unless init_from brings one.
absl::StatusOr<TextJob> PrepareTextJob(const TrainOptions& options, const std::string& work_dir) {
  absl::StatusOr<TextCorpus> corpus =
      LoadTextCorpus(options.dataset_path, options.hyper.holdout_fraction, options.dataset_root);
  if (!corpus.ok()) return corpus.status();
  TextJob job;
  job.config = options.llama;
  if (!options.init_from_dir.empty()) {
    absl::StatusOr<ModelDir> dir =
        ReadInitModel(options.init_from_dir, ModelKind::kText, &job.init_weights);
    if (!dir.ok()) return dir.status();
    job.config = dir->llama;
  }
  TokenizerTrainOptions topts;
  topts.vocab_size = options.llama.vocab_size;
  topts.seed = options.hyper.seed;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      JobTokenizer(work_dir, options.init_from_dir, topts,
                   [&](const std::string& path) { return WriteTokenizerCorpus(*corpus, path); });
  if (!tokenizer.ok()) return tokenizer.status();
  job.tokenizer = *std::move(tokenizer);
  if (absl::Status s = CheckTokenizerFits(*job.tokenizer, job.config.vocab_size); !s.ok()) {
    return s;
  }
  if (absl::Status s = job.config.Normalize(); !s.ok()) return s;
  job.train_tokens = TokenizeDocuments(*job.tokenizer, corpus->train);
  job.heldout_tokens = TokenizeDocuments(*job.tokenizer, corpus->heldout);
  if (job.train_tokens.size() < 2 || job.heldout_tokens.size() < 2) {
    return absl::InvalidArgumentError("the dataset is too small to train on");
  }
  job.heldout_bytes = corpus->heldout_bytes;
  return job;
}

class TextTrainer final : public NetTrainer {
 public:
  TextTrainer(TrainOptions options, TextJob job, StartedNet<LlamaTrainNet> started)
      : NetTrainer(std::move(options), "text", job.config.ToJson(), std::move(job.tokenizer),
                   std::move(started.optimizer), std::move(started.ema), started.step),
        config_(job.config),
        train_tokens_(std::move(job.train_tokens)),
        heldout_tokens_(std::move(job.heldout_tokens)),
        heldout_bytes_(job.heldout_bytes),
        net_(std::move(started.net)),
        window_(
            std::min<int64_t>(config_.seq_len, static_cast<int64_t>(train_tokens_.size()) - 1)) {}

  int64_t parameter_count() const override { return config_.ParameterCount(); }

 private:
  void DrawMicroBatch(int micro) override;
  torch::Tensor ChunkLoss(int64_t row, int64_t rows) override;
  void CountTrained(StepMetrics* m) const override {
    const Hyperparams& h = options().hyper;
    m->tokens = int64_t{h.batch_size} * window_ * h.grad_accum;
  }
  int64_t EvalRows() const override { return chunk_rows(); }
  int64_t BeginHeldOut(int64_t rows) override;
  double HeldOutUnit(int64_t unit) override;
  void FinishHeldOut(double nats, EvalMetrics* e) const override {
    const int64_t n = static_cast<int64_t>(heldout_tokens_.size());
    e->loss = nats / static_cast<double>(std::max<int64_t>(1, n - 1));
    e->bits_per_byte = nats / std::log(2.0) / static_cast<double>(heldout_bytes_);
  }
  TensorMap ExportWeights() const override { return net_->ExportWeights(); }
  std::map<std::string, std::string> SeenState() const override {
    const Hyperparams& h = options().hyper;
    return {{"tokens_seen", absl::StrCat(step() * h.grad_accum * h.batch_size * window_)}};
  }
  void DescribeModel(TrainSnapshot* s) const override {
    s->kind = ModelKind::kText;
    s->llama = config_;
  }
  // A short sample from BOS, with a sampler seeded by (seed, step).
  EvalSamples Samples() const override;

  // Held-out windows evaluated in one forward, padded to the longest.
  struct EvalGroup {
    size_t first = 0, count = 0;  // into eval_windows_
    int64_t len = 0;              // predictions per row (the longest window's)
  };

  const LlamaConfig config_;
  const std::vector<int32_t> train_tokens_;
  const std::vector<int32_t> heldout_tokens_;
  const int64_t heldout_bytes_;
  std::unique_ptr<LlamaTrainNet> net_;
  const int64_t window_;  // tokens per training sequence (seq_len, or less for a tiny corpus)
  torch::Tensor batch_;   // [B, T+1] int64 on the CPU: the drawn micro-batch
  uint64_t dropout_seed_ = 0;  // the drawn micro-batch's: row r's masks come from seed + r
  std::vector<HeldOutWindow> eval_windows_;  // by length, shortest first
  std::vector<EvalGroup> eval_groups_;
};

void TextTrainer::DrawMicroBatch(int micro) {
  const Hyperparams& h = options().hyper;
  const int64_t b = h.batch_size, t = window_;
  // [B, T+1] windows at seeded random offsets of the packed training stream.
  SeededRandom rng(DeriveSeed(h.seed, kDataStream, step(), micro));
  dropout_seed_ = DeriveSeed(h.seed, kDropoutStream, step(), micro);
  batch_ = torch::empty({b, t + 1}, torch::kInt64);  // [B, T+1]
  int64_t* p = batch_.data_ptr<int64_t>();
  const int64_t starts = static_cast<int64_t>(train_tokens_.size()) - t;
  for (int64_t i = 0; i < b; ++i) {
    const int64_t start = rng.Below(starts);
    for (int64_t j = 0; j <= t; ++j) p[i * (t + 1) + j] = train_tokens_[start + j];
  }
}

torch::Tensor TextTrainer::ChunkLoss(int64_t row, int64_t rows) {
  const int64_t b = options().hyper.batch_size, t = window_;
  const torch::Tensor chunk = batch_.narrow(0, row, rows).to(net_->device());  // [R, T+1]
  torch::Tensor dropout;  // [R, sites, T, dim], or none
  if (const double p = options().hyper.dropout; p > 0) {
    dropout = torch::empty({rows, net_->DropoutSites(), t, int64_t{config_.dim}});
    const int64_t n = dropout[0].numel();
    for (int64_t r = 0; r < rows; ++r) {
      FillDropoutRow(Mix64(dropout_seed_ + static_cast<uint64_t>(row + r)), p,
                     dropout.data_ptr<float>() + r * n, n);
    }
    dropout = dropout.to(net_->device());
  }
  const torch::Tensor logits =  // [R, T, V] float32
      net_->Forward(chunk.narrow(1, 0, t), dropout, MatmulDtype(options().hyper));
  // The chunk's share of the micro-batch's mean cross-entropy over B * T tokens.
  return torch::cross_entropy_loss(logits.reshape({rows * t, config_.vocab_size}),
                                   chunk.narrow(1, 1, t).reshape({rows * t}), {},
                                   at::Reduction::Sum) /
         static_cast<double>(b * t);  // []
}

int64_t TextTrainer::BeginHeldOut(int64_t rows) {
  // Each document from its own BOS (HeldOutWindows), windows of similar length in groups of
  // `rows`.
  eval_windows_ = HeldOutWindows(heldout_tokens_, config_.bos_id, config_.seq_len);
  std::stable_sort(eval_windows_.begin(), eval_windows_.end(),
                   [](const HeldOutWindow& a, const HeldOutWindow& b) { return a.len < b.len; });
  eval_groups_.clear();
  for (size_t i = 0; i < eval_windows_.size(); i += static_cast<size_t>(rows)) {
    const size_t count = std::min(eval_windows_.size() - i, static_cast<size_t>(rows));
    eval_groups_.push_back({i, count, eval_windows_[i + count - 1].len});
  }
  return static_cast<int64_t>(eval_groups_.size());
}

double TextTrainer::HeldOutUnit(int64_t unit) {
  const EvalGroup& g = eval_groups_[unit];
  const int64_t r = static_cast<int64_t>(g.count);
  // Inputs padded with BOS after a window's end; targets -100 (ignored) where padded or where
  // the window's tokens only give context.
  torch::Tensor inputs = torch::full({r, g.len}, config_.bos_id, torch::kInt64);  // [r, len]
  torch::Tensor targets = torch::full({r, g.len}, int64_t{-100}, torch::kInt64);  // [r, len]
  int64_t* in = inputs.data_ptr<int64_t>();
  int64_t* tg = targets.data_ptr<int64_t>();
  for (int64_t row = 0; row < r; ++row) {
    const HeldOutWindow& w = eval_windows_[g.first + static_cast<size_t>(row)];
    for (int64_t k = 0; k < w.len; ++k) {
      in[row * g.len + k] = heldout_tokens_[w.start + k];
      if (k >= w.first_scored) tg[row * g.len + k] = heldout_tokens_[w.start + k + 1];
    }
  }
  const torch::Tensor logits = net_->Forward(inputs.to(net_->device()));  // [r, len, V]
  return torch::cross_entropy_loss(logits.reshape({r * g.len, config_.vocab_size}),
                                   targets.to(net_->device()).reshape({r * g.len}), {},
                                   at::Reduction::Sum, /*ignore_index=*/-100)
      .item<double>();
}

EvalSamples TextTrainer::Samples() const {
  EvalSamples s;
  s.prompt = {config_.bos_id};
  s.sampling.temperature = kSampleTemperature;
  s.sampling.top_k = kSampleTopK;
  s.sampling.seed = DeriveSeed(options().hyper.seed, kSampleStream, step(), 0);
  s.max_tokens = static_cast<int>(std::min<int64_t>(kSampleTokens, config_.seq_len - 1));
  return s;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Trainer>> CreateTextTrainer(const TrainOptions& job_options,
                                                          const std::string& work_dir,
                                                          const std::string& checkpoints_dir,
                                                          std::string* restored_note) {
  const TrainOptions options = ResolvePrecision(job_options);
  absl::StatusOr<TextJob> job = PrepareTextJob(options, work_dir);
  if (!job.ok()) return job.status();
  const LlamaConfig& config = job->config;
  ModelStart model{"text", config.ToJson(), std::move(job->init_weights),
                   [&] { return RandomLlamaWeights(config, options.hyper.seed); }};
  absl::StatusOr<StartedNet<LlamaTrainNet>> started =
      StartNet<LlamaTrainNet>(std::move(model), options.hyper, checkpoints_dir, restored_note,
                              [&](const TensorMap& weights) {
                                return LlamaTrainNet::Create(config, weights, options.device);
                              });
  if (!started.ok()) return started.status();
  return CatchTorch("CreateTextTrainer", [&]() -> absl::StatusOr<std::unique_ptr<Trainer>> {
    return std::unique_ptr<Trainer>(new TextTrainer(options, *std::move(job), *std::move(started)));
  });
}

}  // namespace tandem

// The LLM trainer: next-token cross-entropy on packed token windows drawn from the training
// documents, AdamW with warmup + cosine decay, global-norm clipping, gradient accumulation (the
// skeleton in train_common.h); held-out bits per byte and a text sample at each evaluation.
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
constexpr uint64_t kSampleStream = 3;

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
      LoadTextCorpus(options.dataset_path, options.hyper.holdout_fraction);
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
                   std::move(started.optimizer), started.step),
        config_(job.config),
        train_tokens_(std::move(job.train_tokens)),
        heldout_tokens_(std::move(job.heldout_tokens)),
        heldout_bytes_(job.heldout_bytes),
        net_(std::move(started.net)),
        window_(
            std::min<int64_t>(config_.seq_len, static_cast<int64_t>(train_tokens_.size()) - 1)) {}

  int64_t parameter_count() const override { return config_.ParameterCount(); }

 private:
  torch::Tensor MicroBatchLoss(int micro) override;
  void CountTrained(StepMetrics* m) const override {
    const Hyperparams& h = options().hyper;
    m->tokens = int64_t{h.batch_size} * window_ * h.grad_accum;
  }
  absl::Status EvaluateHeldOut(EvalMetrics* e) override;
  TensorMap ExportWeights() const override { return net_->ExportWeights(); }
  std::map<std::string, std::string> SeenState() const override {
    const Hyperparams& h = options().hyper;
    return {{"tokens_seen", absl::StrCat(step() * h.grad_accum * h.batch_size * window_)}};
  }
  absl::Status WriteModelDir(const std::string& dir, SafetensorsFile weights,
                             const ModelProvenance& provenance) const override {
    return WriteTextModelDir(dir, config_, weights, tokenizer().Serialized(), provenance);
  }

  // The held-out stream's total cross-entropy in nats.
  double HeldOutNats() const;
  // A short sample from BOS, drawn with a Sampler seeded by (seed, step).
  std::string Sample() const;

  const LlamaConfig config_;
  const std::vector<int32_t> train_tokens_;
  const std::vector<int32_t> heldout_tokens_;
  const int64_t heldout_bytes_;
  std::unique_ptr<LlamaTrainNet> net_;
  const int64_t window_;  // tokens per training sequence (seq_len, or less for a tiny corpus)
};

torch::Tensor TextTrainer::MicroBatchLoss(int micro) {
  const Hyperparams& h = options().hyper;
  const int64_t b = h.batch_size, t = window_;
  // [B, T+1] windows at seeded random offsets of the packed training stream.
  SeededRandom rng(DeriveSeed(h.seed, kDataStream, step(), micro));
  torch::Tensor batch = torch::empty({b, t + 1}, torch::kInt64);  // [B, T+1]
  int64_t* p = batch.data_ptr<int64_t>();
  const int64_t starts = static_cast<int64_t>(train_tokens_.size()) - t;
  for (int64_t i = 0; i < b; ++i) {
    const int64_t start = rng.Below(starts);
    for (int64_t j = 0; j <= t; ++j) p[i * (t + 1) + j] = train_tokens_[start + j];
  }
  batch = batch.to(net_->device());
  const torch::Tensor inputs = batch.narrow(1, 0, t);   // [B, T]
  const torch::Tensor targets = batch.narrow(1, 1, t);  // [B, T]
  const torch::Tensor logits = net_->Forward(inputs);   // [B, T, V]
  return torch::cross_entropy_loss(logits.reshape({b * t, config_.vocab_size}),
                                   targets.reshape({b * t}));  // []
}

absl::Status TextTrainer::EvaluateHeldOut(EvalMetrics* e) {
  torch::NoGradGuard no_grad;
  const double nats = HeldOutNats();
  const int64_t n = static_cast<int64_t>(heldout_tokens_.size());
  e->loss = nats / static_cast<double>(std::max<int64_t>(1, n - 1));
  e->bits_per_byte = nats / std::log(2.0) / static_cast<double>(heldout_bytes_);
  e->text_sample = Sample();
  return absl::OkStatus();
}

double TextTrainer::HeldOutNats() const {
  const int64_t t = config_.seq_len;
  const int64_t n = static_cast<int64_t>(heldout_tokens_.size());
  // Windows of T+1 tokens with stride T: every held-out token but the first is predicted
  // exactly once, with up to T tokens of context.
  std::vector<int64_t> starts;
  for (int64_t s = 0; s + 1 < n; s += t) starts.push_back(s);
  double nats = 0;
  const int64_t rows = std::max(1, options().hyper.batch_size);
  for (size_t i = 0; i < starts.size();) {
    const int64_t len = std::min(t, n - 1 - starts[i]);  // predicted tokens of this window
    // Full windows in batches; a shorter (last) window alone.
    size_t j = i;
    std::vector<int64_t> ids;
    while (j < starts.size() && static_cast<int64_t>(j - i) < rows &&
           std::min(t, n - 1 - starts[j]) == len) {
      for (int64_t k = 0; k <= len; ++k) ids.push_back(heldout_tokens_[starts[j] + k]);
      ++j;
    }
    const int64_t r = static_cast<int64_t>(j - i);
    const torch::Tensor batch =
        torch::tensor(ids, torch::kInt64).view({r, len + 1}).to(net_->device());  // [r, len+1]
    const torch::Tensor logits = net_->Forward(batch.narrow(1, 0, len));          // [r, len, V]
    nats += torch::cross_entropy_loss(logits.reshape({r * len, config_.vocab_size}),
                                      batch.narrow(1, 1, len).reshape({r * len}), {},
                                      at::Reduction::Sum)
                .item<double>();
    i = j;
  }
  return nats;
}

std::string TextTrainer::Sample() const {
  SamplingParams params;
  params.temperature = kSampleTemperature;
  params.top_k = kSampleTopK;
  params.seed = DeriveSeed(options().hyper.seed, kSampleStream, step(), 0);
  Sampler sampler(params);
  std::vector<int64_t> ids = {config_.bos_id};
  std::vector<int32_t> out;
  for (int i = 0; i < kSampleTokens && static_cast<int64_t>(ids.size()) < config_.seq_len; ++i) {
    const torch::Tensor logits =
        net_->Forward(torch::tensor(ids, torch::kInt64).view({1, -1}).to(net_->device()))
            .select(1, static_cast<int64_t>(ids.size()) - 1)
            .squeeze(0)
            .to(torch::kCPU, torch::kFloat32)
            .contiguous();  // [V]
    const int pick = sampler.Sample(logits.data_ptr<float>(), config_.vocab_size);
    if (pick == config_.bos_id || pick == config_.eos_id) break;
    ids.push_back(pick);
    out.push_back(pick);
  }
  return tokenizer().Decode(out);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Trainer>> CreateTextTrainer(const TrainOptions& options,
                                                          const std::string& work_dir,
                                                          const std::string& checkpoints_dir,
                                                          std::string* restored_note) {
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

// The LLM trainer: next-token cross-entropy on packed token windows drawn from the training
// documents, AdamW with warmup + cosine decay, global-norm clipping, gradient accumulation;
// held-out bits per byte and a text sample at each evaluation.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "models/llama/llama.h"
#include "models/llama/llama_train_net.h"
#include "models/model_dir.h"
#include "models/text/tokenizer.h"
#include "models/torch/torch_util.h"
#include "trainer/adamw.h"
#include "trainer/checkpoint.h"
#include "trainer/job_tokenizer.h"
#include "trainer/seeds.h"
#include "trainer/data/text_dataset.h"
#include "trainer/train_common.h"
#include "trainer/trainer.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using torch_util::CatchTorch;

// Seed streams (see trainer/seeds.h).
constexpr uint64_t kDataStream = 1;
constexpr uint64_t kSampleStream = 3;

constexpr int kSampleTokens = 64;

class TextTrainer : public Trainer {
 public:
  TextTrainer(TrainOptions options, LlamaConfig config, std::unique_ptr<Tokenizer> tokenizer,
              std::vector<int32_t> train_tokens, std::vector<int32_t> heldout_tokens,
              int64_t heldout_bytes, std::unique_ptr<LlamaTrainNet> net,
              std::unique_ptr<AdamW> optimizer, int64_t step)
      : options_(std::move(options)),
        config_(config),
        tokenizer_(std::move(tokenizer)),
        train_tokens_(std::move(train_tokens)),
        heldout_tokens_(std::move(heldout_tokens)),
        heldout_bytes_(heldout_bytes),
        net_(std::move(net)),
        optimizer_(std::move(optimizer)),
        step_(step),
        window_(std::min<int64_t>(config_.seq_len,
                                  static_cast<int64_t>(train_tokens_.size()) - 1)) {}

  int64_t step() const override { return step_; }
  int64_t total_steps() const override { return options_.hyper.steps; }
  const TrainOptions& options() const override { return options_; }
  bool at_step_boundary() const override { return accumulator_.at_step_boundary(); }
  int64_t parameter_count() const override { return config_.ParameterCount(); }

  absl::StatusOr<std::optional<StepMetrics>> MicroStep() override {
    if (step_ >= options_.hyper.steps) {
      return absl::FailedPreconditionError("training is complete");
    }
    return CatchTorch("text training step", [&]() -> absl::StatusOr<std::optional<StepMetrics>> {
      const Hyperparams& h = options_.hyper;
      const int64_t b = h.batch_size, t = window_;
      // [B, T+1] windows at seeded random offsets of the packed training stream.
      SeededRandom rng(DeriveSeed(h.seed, kDataStream, step_, accumulator_.micro()));
      torch::Tensor batch = torch::empty({b, t + 1}, torch::kInt64);  // [B, T+1]
      int64_t* p = batch.data_ptr<int64_t>();
      const int64_t starts = static_cast<int64_t>(train_tokens_.size()) - t;
      for (int64_t i = 0; i < b; ++i) {
        const int64_t start = rng.Below(starts);
        for (int64_t j = 0; j <= t; ++j) p[i * (t + 1) + j] = train_tokens_[start + j];
      }
      batch = batch.to(net_->device());
      torch::Tensor inputs = batch.narrow(1, 0, t);   // [B, T]
      torch::Tensor targets = batch.narrow(1, 1, t);  // [B, T]
      torch::Tensor logits = net_->Forward(inputs);   // [B, T, V]
      torch::Tensor loss = torch::cross_entropy_loss(logits.reshape({b * t, config_.vocab_size}),
                                                     targets.reshape({b * t}));
      absl::StatusOr<std::optional<StepMetrics>> m =
          accumulator_.Backward(loss, h, *optimizer_, &step_);
      if (m.ok() && m->has_value()) (*m)->tokens = b * t * h.grad_accum;
      return m;
    });
  }

  absl::StatusOr<EvalMetrics> Evaluate() override {
    return CatchTorch("text evaluation", [&]() -> absl::StatusOr<EvalMetrics> {
      torch::NoGradGuard no_grad;
      const int64_t t = config_.seq_len;
      const int64_t n = static_cast<int64_t>(heldout_tokens_.size());
      // Windows of T+1 tokens with stride T: every held-out token but the first is predicted
      // exactly once, with up to T tokens of context.
      std::vector<int64_t> starts;
      for (int64_t s = 0; s + 1 < n; s += t) starts.push_back(s);
      double nats = 0;
      const int64_t rows = std::max(1, options_.hyper.batch_size);
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
        torch::Tensor batch =
            torch::tensor(ids, torch::kInt64).view({r, len + 1}).to(net_->device());
        torch::Tensor logits = net_->Forward(batch.narrow(1, 0, len));  // [r, len, V]
        nats += torch::cross_entropy_loss(logits.reshape({r * len, config_.vocab_size}),
                                          batch.narrow(1, 1, len).reshape({r * len}), {},
                                          at::Reduction::Sum)
                    .item<double>();
        i = j;
      }
      EvalMetrics e;
      e.step = step_;
      e.loss = nats / static_cast<double>(std::max<int64_t>(1, n - 1));
      e.bits_per_byte = nats / std::log(2.0) / static_cast<double>(heldout_bytes_);
      e.text_sample = Sample();
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
        {{"kind", "text"},
         {"seed", absl::StrCat(h.seed)},
         {"step", absl::StrCat(step_)},
         // The data position and every random draw are functions of (seed, step).
         {"data_position", absl::StrCat("step ", step_, " of a counter-based stream")},
         {"tokens_seen", absl::StrCat(step_ * h.grad_accum * h.batch_size * window_)},
         {"config", config_.ToJson()}},
        options_.keep_checkpoints);
  }

  absl::Status ExportModel(const std::string& dir, const ModelProvenance& provenance) override {
    if (fs::exists(dir)) return absl::AlreadyExistsError(absl::StrCat(dir, " already exists"));
    SafetensorsFile weights;
    absl::Status s = CatchTorch("text export", [&]() -> absl::Status {
      weights.tensors = net_->ExportWeights();
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    return WriteTextModelDir(dir, config_, weights, tokenizer_->Serialized(), provenance);
  }

 private:
  // A short sample from BOS: temperature 0.8, top-k 40, seeded by the step.
  std::string Sample() {
    SeededRandom rng(DeriveSeed(options_.hyper.seed, kSampleStream, step_, 0));
    std::vector<int64_t> ids = {config_.bos_id};
    std::vector<int32_t> out;
    for (int i = 0; i < kSampleTokens && static_cast<int64_t>(ids.size()) < config_.seq_len; ++i) {
      torch::Tensor logits = net_->Forward(torch::tensor(ids, torch::kInt64)
                                               .view({1, -1})
                                               .to(net_->device()))
                                 .select(1, static_cast<int64_t>(ids.size()) - 1)
                                 .squeeze(0)
                                 .to(torch::kCPU, torch::kFloat64);  // [V]
      auto [top, idx] = logits.div(0.8).topk(std::min<int64_t>(40, config_.vocab_size));
      torch::Tensor probs = torch::softmax(top, 0);  // [k] float64
      double u = rng.Uniform(), acc = 0;
      int64_t pick = idx[idx.size(0) - 1].item<int64_t>();
      for (int64_t k = 0; k < probs.size(0); ++k) {
        acc += probs[k].item<double>();
        if (u < acc) {
          pick = idx[k].item<int64_t>();
          break;
        }
      }
      if (pick == config_.bos_id || pick == config_.eos_id) break;
      ids.push_back(pick);
      out.push_back(static_cast<int32_t>(pick));
    }
    return tokenizer_->Decode(out);
  }

  const TrainOptions options_;
  const LlamaConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  const std::vector<int32_t> train_tokens_;
  const std::vector<int32_t> heldout_tokens_;
  const int64_t heldout_bytes_;
  std::unique_ptr<LlamaTrainNet> net_;
  std::unique_ptr<AdamW> optimizer_;
  int64_t step_ = 0;
  GradientAccumulator accumulator_;
  const int64_t window_;  // tokens per training sequence (seq_len, or less for a tiny corpus)
};

}  // namespace

absl::StatusOr<std::unique_ptr<Trainer>> CreateTextTrainer(const TrainOptions& options,
                                                          const std::string& work_dir,
                                                          const std::string& checkpoints_dir,
                                                          std::string* restored_note) {
  absl::StatusOr<TextCorpus> corpus =
      LoadTextCorpus(options.dataset_path, options.hyper.holdout_fraction);
  if (!corpus.ok()) return corpus.status();
  LlamaConfig config = options.llama;
  TensorMap init_weights;
  if (!options.init_from_dir.empty()) {
    absl::StatusOr<ModelDir> dir =
        ReadInitModel(options.init_from_dir, ModelKind::kText, &init_weights);
    if (!dir.ok()) return dir.status();
    config = dir->llama;
  }
  TokenizerTrainOptions topts;
  topts.vocab_size = options.llama.vocab_size;
  topts.seed = options.hyper.seed;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      JobTokenizer(work_dir, options.init_from_dir, topts, [&](const std::string& path) {
        return WriteTokenizerCorpus(*corpus, path);
      });
  if (!tokenizer.ok()) return tokenizer.status();
  if (absl::Status s = CheckTokenizerFits(**tokenizer, config.vocab_size); !s.ok()) return s;
  if (absl::Status s = config.Normalize(); !s.ok()) return s;
  std::vector<int32_t> train_tokens = TokenizeDocuments(**tokenizer, corpus->train);
  std::vector<int32_t> heldout_tokens = TokenizeDocuments(**tokenizer, corpus->heldout);
  if (train_tokens.size() < 2 || heldout_tokens.size() < 2) {
    return absl::InvalidArgumentError("the dataset is too small to train on");
  }

  absl::StatusOr<std::optional<Checkpoint>> restored =
      RestoreLatestCheckpoint(checkpoints_dir, restored_note);
  if (!restored.ok()) return restored.status();
  std::optional<Checkpoint>& ckpt = *restored;
  if (absl::Status s = CheckCheckpointModel(ckpt, "text", config.ToJson(), checkpoints_dir);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<TensorMap> weights = StartingWeights(
      &ckpt, &init_weights, [&] { return RandomLlamaWeights(config, options.hyper.seed); });
  if (!weights.ok()) return weights.status();
  absl::StatusOr<std::unique_ptr<LlamaTrainNet>> net =
      LlamaTrainNet::Create(config, *weights, options.device);
  if (!net.ok()) return net.status();
  weights->clear();

  return CatchTorch("CreateTextTrainer", [&]() -> absl::StatusOr<std::unique_ptr<Trainer>> {
    absl::StatusOr<std::unique_ptr<AdamW>> optimizer =
        RestoreOptimizer((*net)->parameters(), options.hyper, ckpt);
    if (!optimizer.ok()) return optimizer.status();
    return std::unique_ptr<Trainer>(new TextTrainer(
        options, config, *std::move(tokenizer), std::move(train_tokens),
        std::move(heldout_tokens), corpus->heldout_bytes, *std::move(net), *std::move(optimizer),
        ckpt ? ckpt->step : 0));
  });
}

}  // namespace tandem

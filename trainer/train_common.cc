#include "trainer/train_common.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "models/torch/torch_util.h"
#include "trainer/lr_schedule.h"

namespace tandem {

namespace {

// Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX-BF16): there oneDNN's
// bfloat16 products run several times faster than float32 ones; elsewhere they are emulated.
bool CpuHasBf16MatrixUnits() {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#else
  return false;
#endif
}

}  // namespace

TrainOptions ResolvePrecision(TrainOptions options) {
  std::string& p = options.hyper.precision;
  if (p == kAutoPrecision) {
    const bool fast = absl::StartsWith(options.device, "cuda") || CpuHasBf16MatrixUnits();
    p = options.kind == ModelKind::kText && fast ? kBf16Mixed : kFp32;
  }
  return options;
}

torch::ScalarType MatmulDtype(const Hyperparams& h) {
  return h.precision == kBf16Mixed ? torch::kBFloat16 : torch::kFloat;
}

namespace {

using torch_util::CatchTorch;

// The job's optimizer over the parameters, with its betas and weight decay: AdamW, or Muon for
// the matrices OrthogonalizeByDefault picks ("muon"); DecayByDefault decides which decay.
std::unique_ptr<Optimizer> MakeOptimizer(
    const std::vector<std::pair<std::string, torch::Tensor>>& parameters, const Hyperparams& h) {
  std::vector<Optimizer::Param> params;
  for (const auto& [name, p] : parameters) {
    params.push_back({name, p, DecayByDefault(name, p, h.decay_norms_and_embeddings),
                      h.optimizer == kMuon && OrthogonalizeByDefault(name, p)});
  }
  Optimizer::Options options;
  options.beta1 = h.beta1;
  options.beta2 = h.beta2;
  options.weight_decay = h.weight_decay;
  options.newton_schulz_dtype = MatmulDtype(h);
  return std::make_unique<Optimizer>(std::move(params), options);
}

// The newest checkpoint of `dir` that verifies, or none (an empty `dir`, or no checkpoint: a
// fresh start). `*note` (may be null) says which step was restored and which checkpoints were
// skipped as corrupt. Other errors (an unreadable folder) are returned.
absl::StatusOr<std::optional<Checkpoint>> RestoreLatestCheckpoint(const std::string& dir,
                                                                  std::string* note) {
  std::optional<Checkpoint> out;
  std::vector<std::string> skipped;
  if (!dir.empty()) {
    absl::StatusOr<Checkpoint> latest = LoadLatestCheckpoint(dir, &skipped);
    if (latest.ok()) {
      out = *std::move(latest);
    } else if (!absl::IsNotFound(latest.status())) {
      return latest.status();
    }
  }
  if (note) {
    std::vector<std::string> parts;
    if (out) parts.push_back(absl::StrCat("resumed from the checkpoint of step ", out->step));
    for (const std::string& s : skipped) parts.push_back(absl::StrCat("skipped ", s));
    *note = absl::StrJoin(parts, "; ");
  }
  return out;
}

// FAILED_PRECONDITION when `ckpt` (if any) was written for another kind of model or another
// config (its state's "kind" / "config" differ from these): restoring it would fail on shapes or,
// worse, succeed with different meaning.
absl::Status CheckCheckpointModel(const std::optional<Checkpoint>& ckpt, const std::string& kind,
                                  const std::string& config_json, const std::string& dir) {
  if (!ckpt) return absl::OkStatus();
  auto saved_kind = ckpt->state.find("kind");
  auto saved_config = ckpt->state.find("config");
  if ((saved_kind != ckpt->state.end() && saved_kind->second != kind) ||
      (saved_config != ckpt->state.end() && saved_config->second != config_json)) {
    return absl::FailedPreconditionError(
        absl::StrCat("the checkpoint of step ", ckpt->step, " in ", dir,
                     " was written for another model (kind or config differ)"));
  }
  return absl::OkStatus();
}

// The weights a run starts from: the restored checkpoint's (moved out of *ckpt), else
// init_from's (moved out of *init_weights, when not empty), else what `fresh` draws.
absl::StatusOr<TensorMap> StartingWeights(std::optional<Checkpoint>* ckpt, TensorMap* init_weights,
                                          const std::function<absl::StatusOr<TensorMap>()>& fresh) {
  if (ckpt->has_value()) return std::move((*ckpt)->model);
  if (!init_weights->empty()) return std::move(*init_weights);
  return fresh();
}

}  // namespace

absl::StatusOr<ModelDir> ReadInitModel(const std::string& dir, ModelKind kind, TensorMap* weights) {
  absl::StatusOr<ModelDir> model = ReadModelDir(dir);
  if (!model.ok()) return model.status();
  if (model->kind != kind) {
    return kind == ModelKind::kText
               ? absl::InvalidArgumentError(
                     "init_from names an image model; a text job needs a text model")
               : absl::InvalidArgumentError(
                     "init_from names a text model; an image job needs an image model");
  }
  absl::StatusOr<SafetensorsFile> file = ReadSafetensors(model->weights_path());
  if (!file.ok()) return file.status();
  *weights = std::move(file->tensors);
  return model;
}

absl::Status CheckTokenizerFits(const Tokenizer& tokenizer, int vocab_size) {
  if (tokenizer.vocab_size() <= vocab_size) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("the tokenizer has ", tokenizer.vocab_size(),
                                                 " pieces, more than the model's vocab_size ",
                                                 vocab_size));
}

absl::StatusOr<std::unique_ptr<Optimizer>> RestoreOptimizer(
    const std::vector<std::pair<std::string, torch::Tensor>>& parameters, const Hyperparams& h,
    const std::optional<Checkpoint>& ckpt) {
  std::unique_ptr<Optimizer> optimizer = MakeOptimizer(parameters, h);
  if (ckpt) {
    if (absl::Status s = optimizer->LoadState(ckpt->optimizer, ckpt->step); !s.ok()) return s;
  }
  return optimizer;
}

absl::StatusOr<RunStart> StartRun(ModelStart model, const std::string& checkpoints_dir,
                                  std::string* restored_note) {
  absl::StatusOr<std::optional<Checkpoint>> restored =
      RestoreLatestCheckpoint(checkpoints_dir, restored_note);
  if (!restored.ok()) return restored.status();
  RunStart run;
  run.checkpoint = *std::move(restored);
  if (absl::Status s =
          CheckCheckpointModel(run.checkpoint, model.kind, model.config_json, checkpoints_dir);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<TensorMap> weights =
      StartingWeights(&run.checkpoint, &model.init_weights, model.fresh);
  if (!weights.ok()) return weights.status();
  run.weights = *std::move(weights);
  return run;
}

absl::Status GradientAccumulator::BackwardChunk(const torch::Tensor& loss, const Hyperparams& h,
                                               int64_t step) {
  const double value = loss.item<double>();
  if (!std::isfinite(value)) {
    return absl::InternalError(absl::StrCat("the training loss became ", value, " at step ",
                                            step + 1, "; lower the learning rate"));
  }
  (loss / static_cast<double>(h.grad_accum)).backward();
  micro_loss_ += value;
  in_micro_ = true;
  return absl::OkStatus();
}

std::optional<StepMetrics> GradientAccumulator::EndMicroStep(const Hyperparams& h,
                                                             Optimizer& optimizer, int64_t* step) {
  in_micro_ = false;
  loss_sum_ += micro_loss_;
  micro_loss_ = 0;
  if (++micro_ < h.grad_accum) return std::nullopt;
  StepMetrics m;
  m.lr = LearningRate(h, *step);
  m.grad_norm = optimizer.Step(m.lr, h.grad_clip);
  m.step = ++*step;
  m.loss = loss_sum_ / h.grad_accum;
  micro_ = 0;
  loss_sum_ = 0;
  return m;
}

// ---------------------------------------------------------------------------------------------
// NetTrainer.

NetTrainer::NetTrainer(TrainOptions options, std::string kind, std::string config_json,
                       std::unique_ptr<Tokenizer> tokenizer, std::unique_ptr<Optimizer> optimizer,
                       std::unique_ptr<Ema> ema, int64_t step)
    : options_(std::move(options)),
      kind_(std::move(kind)),
      config_json_(std::move(config_json)),
      tokenizer_(std::move(tokenizer)),
      optimizer_(std::move(optimizer)),
      ema_(std::move(ema)),
      step_(step),
      total_steps_(options_.hyper.steps) {}

int NetTrainer::chunk_rows() const {
  const int b = options_.hyper.batch_size;
  const int k = chunk_rows_ > 0 ? chunk_rows_ : options_.hyper.chunk_rows;
  return k > 0 && k < b ? k : b;
}

void NetTrainer::SetChunkRows(int rows) { chunk_rows_ = rows; }

absl::StatusOr<double> NetTrainer::ProbeChunk(int rows) {
  const std::string what = absl::StrCat(kind_, " calibration");
  return CatchTorch(what.c_str(), [&]() -> absl::StatusOr<double> {
    DrawMicroBatch(accumulator_.micro());  // drawn again, identically, by the first chunk
    const absl::Time t0 = absl::Now();
    ChunkLoss(0, std::min<int64_t>(rows, options_.hyper.batch_size)).backward();
    const double seconds = absl::ToDoubleSeconds(absl::Now() - t0);
    optimizer_->ZeroGrad();
    return seconds;
  });
}

absl::StatusOr<std::optional<StepMetrics>> NetTrainer::RunChunk() {
  if (step_ >= total_steps_) {
    return absl::FailedPreconditionError("training is complete");
  }
  const std::string what = absl::StrCat(kind_, " training step");
  return CatchTorch(what.c_str(), [&]() -> absl::StatusOr<std::optional<StepMetrics>> {
    const Hyperparams& h = options_.hyper;
    if (chunk_row_ == 0) DrawMicroBatch(accumulator_.micro());
    const int64_t rows = std::min<int64_t>(chunk_rows(), h.batch_size - chunk_row_);
    const torch::Tensor loss = ChunkLoss(chunk_row_, rows);  // []
    if (absl::Status s = accumulator_.BackwardChunk(loss, h, step_); !s.ok()) return s;
    chunk_row_ += rows;
    if (chunk_row_ < h.batch_size) return std::optional<StepMetrics>();
    chunk_row_ = 0;
    Hyperparams schedule = h;
    schedule.steps = total_steps_;
    std::optional<StepMetrics> m = accumulator_.EndMicroStep(schedule, *optimizer_, &step_);
    if (m) {
      if (ema_) ema_->Update(m->step);
      m->total_steps = total_steps_;
      CountTrained(&*m);
    }
    return m;
  });
}

void NetTrainer::StartEvaluation() {
  eval_unit_ = 0;
  eval_sum_ = 0;
  eval_units_ = -1;  // planned by the first unit, inside the torch boundary
}

absl::StatusOr<std::optional<EvalMetrics>> NetTrainer::RunEvalChunk() {
  const std::string what = absl::StrCat(kind_, " evaluation");
  return CatchTorch(what.c_str(), [&]() -> absl::StatusOr<std::optional<EvalMetrics>> {
    torch::NoGradGuard no_grad;
    if (eval_units_ < 0) {
      if (ema_) ema_->SwapIn();  // the average is what is evaluated; back after the last unit
      eval_units_ = BeginHeldOut(EvalRows());
    }
    if (eval_unit_ < eval_units_) eval_sum_ += HeldOutUnit(eval_unit_++);
    if (eval_unit_ < eval_units_) return std::optional<EvalMetrics>();
    EvalMetrics e;
    e.step = step_;
    FinishHeldOut(eval_sum_, &e);
    eval_units_ = -1;
    if (ema_) ema_->SwapOut();
    return std::optional<EvalMetrics>(e);
  });
}

absl::StatusOr<TrainSnapshot> NetTrainer::Snapshot() {
  if (!at_step_boundary()) {
    return absl::FailedPreconditionError("a snapshot needs a step boundary");
  }
  TrainSnapshot snap;
  snap.step = step_;
  absl::Status s = CatchTorch("snapshot", [&]() -> absl::Status {
    snap.model = ExportWeights();
    snap.optimizer = optimizer_->State();
    if (ema_) {
      for (auto& [name, t] : ema_->State()) snap.optimizer[name] = std::move(t);
      ema_->SwapIn();
      snap.serving = ExportWeights();
      ema_->SwapOut();
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  snap.state = SeenState();
  snap.state["kind"] = kind_;
  snap.state["seed"] = absl::StrCat(options_.hyper.seed);
  snap.state["step"] = absl::StrCat(step_);
  snap.state["chunk_rows"] = absl::StrCat(chunk_rows());
  // The data position and every random draw are functions of (seed, step, micro-step).
  snap.state["data_position"] = absl::StrCat("step ", step_, " of a counter-based stream");
  snap.state["config"] = config_json_;
  snap.tokenizer = tokenizer_->File();
  snap.keep_checkpoints = options_.keep_checkpoints;
  DescribeModel(&snap);
  snap.samples = Samples();
  return snap;
}

}  // namespace tandem

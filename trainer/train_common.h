// What the LLM and diffusion trainers share around their nets: the trainer skeleton (NetTrainer:
// the step counter, gradient accumulation into optimizer steps, checkpoints, export), the
// sequence that starts a run (restore a checkpoint, pick the starting weights, build the net,
// restore the optimizer), and the small checks of a job's model and tokenizer.
//
// Internal to the trainer's LibTorch translation units (this header includes torch). Functions
// that touch tensors may throw c10::Error; callers catch at their boundary (CatchTorch). Not
// thread-safe (as Trainer).
#ifndef TANDEM_TRAINER_TRAIN_COMMON_H_
#define TANDEM_TRAINER_TRAIN_COMMON_H_

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/formats/safetensors.h"
#include "models/model_dir.h"
#include "models/text/tokenizer.h"
#include "models/torch/torch_util.h"
#include "trainer/optimizer.h"
#include "trainer/checkpoint.h"
#include "trainer/ema.h"
#include "trainer/train_options.h"
#include "trainer/trainer.h"

namespace tandem {

// ---------------------------------------------------------------------------------------------
// A job's model and tokenizer.

// The model directory a job fine-tunes from (options.init_from_dir): its config (ModelDir) and
// its weights into *weights. INVALID_ARGUMENT when it holds the other kind of model.
absl::StatusOr<ModelDir> ReadInitModel(const std::string& dir, ModelKind kind, TensorMap* weights);

// INVALID_ARGUMENT when the tokenizer has more pieces than the model's vocab_size.
absl::Status CheckTokenizerFits(const Tokenizer& tokenizer, int vocab_size);

// ---------------------------------------------------------------------------------------------
// Starting a run.

// What the model-specific half of a trainer's construction decides about its model.
struct ModelStart {
  std::string kind;         // "text" or "image": a restored checkpoint's state["kind"] must match
  std::string config_json;  // the model's config: a restored checkpoint's state["config"] must too
  TensorMap init_weights;   // init_from's weights; empty: `fresh` draws them
  std::function<absl::StatusOr<TensorMap>()> fresh;
};

// Where a run starts: the newest checkpoint of its folder that verifies (none: a fresh start),
// and the weights to build the net on — that checkpoint's, else init_from's, else fresh ones.
struct RunStart {
  std::optional<Checkpoint> checkpoint;  // its model tensors moved into `weights`
  TensorMap weights;

  int64_t step() const { return checkpoint ? checkpoint->step : 0; }
};

// Restores the newest good checkpoint of `checkpoints_dir` (empty: none), saying in
// `*restored_note` (may be null) which step was restored and which checkpoints were skipped as
// corrupt; FAILED_PRECONDITION when it was written for another kind of model or another config.
// Then picks the starting weights.
absl::StatusOr<RunStart> StartRun(ModelStart model, const std::string& checkpoints_dir,
                                  std::string* restored_note);

// `options` with hyper.precision "auto" resolved for its kind and device: "bf16-mixed" for a
// text job on a GPU or on a CPU with bfloat16 matrix instructions, else "fp32".
TrainOptions ResolvePrecision(TrainOptions options);

// The dtype of the training step's matrix-product operands: bfloat16 for h.precision
// "bf16-mixed", else float32.
torch::ScalarType MatmulDtype(const Hyperparams& h);

// The job's optimizer (AdamW, or Muon for the hidden matrices) over a net's (name, leaf tensor)
// parameters with its betas and weight decay (DecayByDefault decides which decay), with the
// state (moments, step count) of `ckpt` when there is one.
absl::StatusOr<std::unique_ptr<Optimizer>> RestoreOptimizer(
    const std::vector<std::pair<std::string, torch::Tensor>>& parameters, const Hyperparams& h,
    const std::optional<Checkpoint>& ckpt);

// A run's net and its optimizer, at the run's step.
template <typename Net>
struct StartedNet {
  std::unique_ptr<Net> net;
  std::unique_ptr<Optimizer> optimizer;
  std::unique_ptr<Ema> ema;  // when hyper.ema_decay > 0
  int64_t step = 0;
};

// StartRun, then the net on its weights (create_net(const TensorMap&) ->
// absl::StatusOr<std::unique_ptr<Net>>, e.g. LlamaTrainNet::Create on the job's device) and the
// optimizer over the net's parameters.
template <typename Net, typename CreateNet>
absl::StatusOr<StartedNet<Net>> StartNet(ModelStart model, const Hyperparams& hyper,
                                         const std::string& checkpoints_dir,
                                         std::string* restored_note, CreateNet&& create_net) {
  absl::StatusOr<RunStart> run = StartRun(std::move(model), checkpoints_dir, restored_note);
  if (!run.ok()) return run.status();
  absl::StatusOr<std::unique_ptr<Net>> net = create_net(run->weights);
  if (!net.ok()) return net.status();
  run->weights.clear();  // the net holds its own copies
  absl::StatusOr<std::unique_ptr<Optimizer>> optimizer = torch_util::CatchTorch(
      "restoring the optimizer",
      [&] { return RestoreOptimizer((*net)->parameters(), hyper, run->checkpoint); });
  if (!optimizer.ok()) return optimizer.status();
  StartedNet<Net> out;
  out.net = *std::move(net);
  out.optimizer = *std::move(optimizer);
  out.step = run->step();
  if (hyper.ema_decay > 0) {
    absl::StatusOr<std::unique_ptr<Ema>> ema = torch_util::CatchTorch(
        "restoring the weights' average", [&]() -> absl::StatusOr<std::unique_ptr<Ema>> {
          auto e = std::make_unique<Ema>(out.optimizer->params(), hyper.ema_decay);
          if (run->checkpoint) {
            if (absl::Status s = e->LoadState(run->checkpoint->optimizer); !s.ok()) return s;
          }
          return e;
        });
    if (!ema.ok()) return ema.status();
    out.ema = *std::move(ema);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The trainer skeleton.

// Gradient accumulation over chunks and micro-steps: every chunk's loss (its share of the
// micro-batch's mean) is backpropagated divided by grad_accum; every grad_accum-th completed
// micro-batch ends an optimizer step at LearningRate(h, step) with h.grad_clip.
class GradientAccumulator {
 public:
  // Checks the chunk's loss is finite (INTERNAL naming the step otherwise, with nothing
  // backpropagated) and backpropagates it.
  absl::Status BackwardChunk(const torch::Tensor& loss, const Hyperparams& h, int64_t step);
  // Ends the current micro-step; when that completes a step applies `optimizer` and advances
  // *step. Then returns the step's metrics: step, lr, grad_norm and the mean loss over its
  // micro-steps (the caller fills tokens / images).
  std::optional<StepMetrics> EndMicroStep(const Hyperparams& h, Optimizer& optimizer,
                                          int64_t* step);
  // Micro-steps of the current step done so far (the next one's index); 0 at a step boundary.
  int micro() const { return micro_; }
  bool at_step_boundary() const { return micro_ == 0 && !in_micro_; }
  bool at_micro_boundary() const { return !in_micro_; }

 private:
  int micro_ = 0;          // micro-steps accumulated into the current step
  bool in_micro_ = false;  // a micro-step has chunks done and chunks to go
  double micro_loss_ = 0;  // the current micro-step's loss so far (its chunks' sum)
  double loss_sum_ = 0;    // completed micro-steps' losses
};

// The Trainer both models' trainers are: it owns the step counter, the optimizer, the gradient
// accumulation, the chunking and the job's tokenizer, and implements the Trainer interface around
// hooks that the model's trainer supplies (its micro-batch and chunk losses, evaluation units,
// weights, samples). The hooks may throw c10::Error: NetTrainer calls them inside its torch
// boundary.
class NetTrainer : public Trainer {
 public:
  int64_t step() const final { return step_; }
  int64_t total_steps() const final { return total_steps_; }
  const TrainOptions& options() const final { return options_; }
  bool at_step_boundary() const final { return accumulator_.at_step_boundary(); }
  bool at_micro_boundary() const final { return accumulator_.at_micro_boundary(); }
  int chunk_rows() const final;
  absl::StatusOr<double> ProbeChunk(int rows) final;
  void SetChunkRows(int rows) final;
  void SetTotalSteps(int64_t steps) final { total_steps_ = std::max(steps, step_ + 1); }

  absl::StatusOr<std::optional<StepMetrics>> RunChunk() final;
  void StartEvaluation() final;
  absl::StatusOr<std::optional<EvalMetrics>> RunEvalChunk() final;
  absl::StatusOr<TrainSnapshot> Snapshot() final;

 protected:
  // `kind` and `config_json` as in ModelStart; `step` the run's (StartedNet::step); `ema` may
  // be null (no average kept).
  NetTrainer(TrainOptions options, std::string kind, std::string config_json,
             std::unique_ptr<Tokenizer> tokenizer, std::unique_ptr<Optimizer> optimizer,
             std::unique_ptr<Ema> ema, int64_t step);

  const Tokenizer& tokenizer() const { return *tokenizer_; }

 private:
  // Draws micro-batch `micro` of the current step whole (CPU): its data and every random draw
  // are a function of (hyper.seed, step(), micro) alone.
  virtual void DrawMicroBatch(int micro) = 0;
  // The loss [] of rows [row, row + rows) of the drawn micro-batch as their share of its mean
  // loss: the chunks' losses sum to the micro-batch's mean.
  virtual torch::Tensor ChunkLoss(int64_t row, int64_t rows) = 0;
  // What a completed step trained on: sets m->tokens or m->images.
  virtual void CountTrained(StepMetrics* m) const = 0;
  // Evaluation: Begin (fixed draws, the units' plan for `rows` rows a unit) and how many units;
  // unit i's contribution to the held-out sum; the metrics from the sum (e->step is set). No
  // effect on training's randomness.
  virtual int64_t BeginHeldOut(int64_t rows) = 0;
  virtual double HeldOutUnit(int64_t unit) = 0;
  virtual void FinishHeldOut(double sum, EvalMetrics* e) const = 0;
  // Rows a unit of evaluation takes, from the training chunk's (no gradients: cheaper).
  virtual int64_t EvalRows() const = 0;
  // The net's parameters as float32 CPU tensors under their safetensors names.
  virtual TensorMap ExportWeights() const = 0;
  // Checkpoint state beyond what NetTrainer writes: how much has been trained on.
  virtual std::map<std::string, std::string> SeenState() const = 0;
  // The model's config into the snapshot (kind, llama or diffusion).
  virtual void DescribeModel(TrainSnapshot* s) const = 0;
  // What an evaluation at the current step samples.
  virtual EvalSamples Samples() const = 0;

  const TrainOptions options_;
  const std::string kind_;
  const std::string config_json_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<Ema> ema_;
  int64_t step_ = 0;
  int64_t total_steps_ = 0;  // options_.hyper.steps, unless SetTotalSteps moved it
  GradientAccumulator accumulator_;
  int chunk_rows_ = 0;      // 0: options_.hyper's
  int64_t chunk_row_ = 0;   // the next chunk's first row in the current micro-batch
  int64_t eval_unit_ = 0;   // the next evaluation unit
  int64_t eval_units_ = 0;
  double eval_sum_ = 0;
};

}  // namespace tandem

#endif  // TANDEM_TRAINER_TRAIN_COMMON_H_

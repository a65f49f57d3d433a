// What the LLM and diffusion trainers share around their nets: the optimizer over a net's
// parameters, gradient accumulation into optimizer steps, and checkpoint writing and restoring.
//
// Internal to the trainer's LibTorch translation units (this header includes torch). Functions
// that touch tensors may throw c10::Error; callers catch at their boundary (CatchTorch).
#ifndef TANDEM_TRAINER_TRAIN_COMMON_H_
#define TANDEM_TRAINER_TRAIN_COMMON_H_

#include <torch/torch.h>

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
#include "models/model_dir.h"
#include "models/text/tokenizer.h"
#include "trainer/adamw.h"
#include "trainer/checkpoint.h"
#include "trainer/train_options.h"
#include "trainer/trainer.h"

namespace tandem {

// The model directory a job fine-tunes from (options.init_from_dir): its config (ModelDir) and
// its weights into *weights. INVALID_ARGUMENT when it holds the other kind of model.
absl::StatusOr<ModelDir> ReadInitModel(const std::string& dir, ModelKind kind, TensorMap* weights);

// INVALID_ARGUMENT when the tokenizer has more pieces than the model's vocab_size.
absl::Status CheckTokenizerFits(const Tokenizer& tokenizer, int vocab_size);

// AdamW over a net's (name, leaf tensor) parameters with the job's betas and weight decay;
// DecayByDefault decides which decay.
std::unique_ptr<AdamW> MakeOptimizer(
    const std::vector<std::pair<std::string, torch::Tensor>>& parameters, const Hyperparams& h);
// MakeOptimizer, then the state (moments, step count) of the restored checkpoint `ckpt` when
// there is one.
absl::StatusOr<std::unique_ptr<AdamW>> RestoreOptimizer(
    const std::vector<std::pair<std::string, torch::Tensor>>& parameters, const Hyperparams& h,
    const std::optional<Checkpoint>& ckpt);

// Gradient accumulation: every micro-step's loss is backpropagated divided by grad_accum; every
// grad_accum-th completes an optimizer step at LearningRate(h, step) with h.grad_clip.
class GradientAccumulator {
 public:
  // Checks the micro-batch's mean loss is finite (INTERNAL naming the step otherwise, with
  // nothing backpropagated), backpropagates it, and when this completes a step applies
  // `optimizer` and advances *step. Then returns the step's metrics: step, lr, grad_norm and the
  // mean loss over its micro-steps (the caller fills tokens / images).
  absl::StatusOr<std::optional<StepMetrics>> Backward(const torch::Tensor& loss,
                                                      const Hyperparams& h, AdamW& optimizer,
                                                      int64_t* step);
  // Micro-steps of the current step done so far (the next one's index); 0 at a step boundary.
  int micro() const { return micro_; }
  bool at_step_boundary() const { return micro_ == 0; }

 private:
  int micro_ = 0;  // micro-steps accumulated into the current step
  double loss_sum_ = 0;
};

// Writes the checkpoint of `step` (the model as `export_model` gives it, the optimizer's state,
// `state`) into `dir` and prunes all but the newest `keep` (at least 1).
absl::Status SaveTrainingCheckpoint(const std::string& dir, int64_t step,
                                    const std::function<TensorMap()>& export_model,
                                    const AdamW& optimizer,
                                    std::map<std::string, std::string> state, int keep);

// The newest checkpoint of `dir` that verifies, or none (an empty `dir`, or no checkpoint: a
// fresh start). `*note` (may be null) says which step was restored and which checkpoints were
// skipped as corrupt. Other errors (an unreadable folder) are returned.
absl::StatusOr<std::optional<Checkpoint>> RestoreLatestCheckpoint(const std::string& dir,
                                                                  std::string* note);

// FAILED_PRECONDITION when `ckpt` (if any) was written for another kind of model or another
// config (its state's "kind" / "config" differ from these): restoring it would fail on shapes or,
// worse, succeed with different meaning.
absl::Status CheckCheckpointModel(const std::optional<Checkpoint>& ckpt, const std::string& kind,
                                  const std::string& config_json, const std::string& dir);

// The weights a run starts from: the restored checkpoint's (moved out of *ckpt), else
// init_from's (moved out of *init_weights, when not empty), else what `fresh` draws.
absl::StatusOr<TensorMap> StartingWeights(std::optional<Checkpoint>* ckpt, TensorMap* init_weights,
                                         const std::function<absl::StatusOr<TensorMap>()>& fresh);

}  // namespace tandem

#endif  // TANDEM_TRAINER_TRAIN_COMMON_H_

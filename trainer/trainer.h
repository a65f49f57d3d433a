// Trainer: one training run of one model on one device — the model's parameters with gradients,
// the AdamW state, the data pipeline and the step counter. Torch-free interface; the LibTorch
// implementations are text_trainer.cc (LLM) and image_trainer.cc (diffusion).
//
// The owner (a device loop) is the only caller: not thread-safe. Work is cut into micro-steps
// (one forward + backward of one micro-batch) so the owner can interleave serving between them;
// every hyper.grad_accum-th micro-step also applies the optimizer and completes a step.
//
// Determinism: the micro-batch and every random draw of micro-step m of step s depend only on
// (hyper.seed, s, m), never on what ran before, so a run restored from a checkpoint at step s
// continues with exactly the losses an uninterrupted run has (same machine, same thread count).
#ifndef TANDEM_TRAINER_TRAINER_H_
#define TANDEM_TRAINER_TRAINER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/model_dir.h"
#include "trainer/train_options.h"

namespace tandem {

// One completed optimizer step.
struct StepMetrics {
  int64_t step = 0;         // steps done, this one included (1 for the first)
  double loss = 0;          // mean training loss over the step's micro-batches
  double lr = 0;            // the learning rate the step used
  double grad_norm = 0;     // global L2 norm of the gradient before clipping
  int64_t tokens = 0;       // tokens trained on in this step (text)
  int64_t images = 0;       // images trained on in this step (image)
};

struct EvalMetrics {
  int64_t step = 0;
  double loss = 0;           // mean held-out loss (text: nats per token; image: noise MSE)
  double bits_per_byte = 0;  // text: total held-out nats / ln 2 / held-out UTF-8 bytes
  std::string text_sample;   // text: a short sample from the model
  std::string image_png;     // image: a small grid of samples, PNG
};

class Trainer {
 public:
  virtual ~Trainer() = default;

  virtual int64_t step() const = 0;  // optimizer steps done
  virtual int64_t total_steps() const = 0;
  virtual const TrainOptions& options() const = 0;
  // True when no gradient is half accumulated (checkpoints, pauses and exports happen here).
  virtual bool at_step_boundary() const = 0;

  // One micro-step; returns the step's metrics when it completed an optimizer step.
  // FAILED_PRECONDITION once step() == total_steps(); INTERNAL for a non-finite loss.
  virtual absl::StatusOr<std::optional<StepMetrics>> MicroStep() = 0;

  // Held-out evaluation (no gradients, no effect on training's randomness).
  virtual absl::StatusOr<EvalMetrics> Evaluate() = 0;

  // Writes a checkpoint of the current step (at a step boundary) into `checkpoints_dir` (see
  // trainer/checkpoint.h) and prunes all but the newest options().keep_checkpoints.
  virtual absl::Status SaveCheckpoint(const std::string& checkpoints_dir) = 0;

  // Writes a servable model directory (config.json, model.safetensors, tokenizer.model,
  // meta.json with `provenance`) to `dir`, which must not exist yet.
  virtual absl::Status ExportModel(const std::string& dir, const ModelProvenance& provenance) = 0;

  virtual int64_t parameter_count() const = 0;
};

// Builds a trainer from `options` (already validated; see ValidateTrainOptions). When
// `checkpoints_dir` holds a good checkpoint, the newest one is restored (a corrupt or truncated
// one is skipped, and `*restored_note` says so); otherwise training starts at step 0 from
// options.init_from or fresh weights. A text job without init_from first trains its
// SentencePiece tokenizer on the training split and saves it in `work_dir`.
absl::StatusOr<std::unique_ptr<Trainer>> CreateTextTrainer(const TrainOptions& options,
                                                          const std::string& work_dir,
                                                          const std::string& checkpoints_dir,
                                                          std::string* restored_note);
absl::StatusOr<std::unique_ptr<Trainer>> CreateImageTrainer(const TrainOptions& options,
                                                           const std::string& work_dir,
                                                           const std::string& checkpoints_dir,
                                                           std::string* restored_note);

}  // namespace tandem

#endif  // TANDEM_TRAINER_TRAINER_H_

// Trainer: one training run of one model on one device — the model's parameters with gradients,
// the optimizer state, the data pipeline and the step counter. Torch-free interface; the LibTorch
// implementations are text_trainer.cc (LLM) and image_trainer.cc (diffusion).
//
// The owner (a device loop) is the only caller: not thread-safe. Work is cut into chunks so the
// owner can interleave serving between them: a chunk is the forward + backward of at most
// chunk_rows() rows (sequences or images) of the current micro-batch; every hyper.grad_accum-th
// completed micro-batch also applies the optimizer and completes a step. Evaluation is cut into
// chunks the same way. Snapshot() takes a host copy at a step boundary, which WriteCheckpoint and
// ExportModel write from any thread while training goes on.
//
// Determinism: the micro-batch and every random draw of micro-step m of step s depend only on
// (hyper.seed, s, m), never on what ran before; a micro-batch's rows are drawn whole at its first
// chunk, and chunk gradients accumulate in row order. So a run restored from a checkpoint at step
// s continues with exactly the losses an uninterrupted run has, whatever ran between the chunks
// (same machine, thread count and chunk_rows), and a run with other chunk_rows differs only by
// float rounding.
#ifndef TANDEM_TRAINER_TRAINER_H_
#define TANDEM_TRAINER_TRAINER_H_

#include <cstdint>
#include <memory>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/formats/safetensors.h"
#include "models/image_model.h"
#include "models/model_dir.h"
#include "models/text/sampler.h"
#include "trainer/train_options.h"

namespace tandem {

// One completed optimizer step.
struct StepMetrics {
  int64_t step = 0;         // steps done, this one included (1 for the first)
  int64_t total_steps = 0;  // the schedule's end as the step ran (total_steps())
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
  std::string text_sample;   // text: a short sample from the model (see EvalSamples)
  std::string image_png;     // image: a small grid of samples, PNG (see EvalSamples)
};

// What an evaluation samples from the model being trained, as ordinary inference work on a
// model exported from the snapshot of that step: a text completion from `prompt`, or one image
// per spec tiled `columns` wide into one PNG (TileSamples).
struct EvalSamples {
  std::vector<int32_t> prompt;  // text: BOS
  SamplingParams sampling;
  int max_tokens = 0;
  std::vector<ImageSampleSpec> images;  // image
  int columns = 0;
};

// A host copy of a run at a step boundary: everything a checkpoint or a model export needs.
struct TrainSnapshot {
  int64_t step = 0;
  ModelKind kind = ModelKind::kText;
  LlamaConfig llama;          // kText
  DiffusionConfig diffusion;  // kImage
  TensorMap model;            // the weights, named as in model.safetensors
  TensorMap serving;          // what to serve and sample (the EMA's); empty: `model`
  TensorMap optimizer;        // the optimizer's moments (trainer/optimizer.h)
  std::map<std::string, std::string> state;  // the checkpoint manifest's state
  TokenizerFile tokenizer;    // the job's tokenizer file (SentencePiece or llama2.c)
  int keep_checkpoints = 3;
  EvalSamples samples;        // what an evaluation at this step samples
};

// Writes the snapshot as the checkpoint of its step into `checkpoints_dir` (trainer/checkpoint.h)
// and prunes all but the newest snapshot.keep_checkpoints. Any thread.
absl::Status WriteCheckpoint(const TrainSnapshot& snapshot, const std::string& checkpoints_dir);
// Writes a servable model directory (config.json, model.safetensors, the tokenizer, meta.json
// with `provenance`) to `dir`, which must not exist yet. Any thread.
absl::Status ExportModel(const TrainSnapshot& snapshot, const std::string& dir,
                         const ModelProvenance& provenance);

// The PNG grid of an image evaluation's samples (8-bit pixels, as ImageModel::Pixels gives them).
absl::StatusOr<std::string> TileSamples(const DiffusionConfig& config,
                                        const std::vector<std::vector<uint8_t>>& pixels,
                                        int columns);

class Trainer {
 public:
  virtual ~Trainer() = default;

  virtual int64_t step() const = 0;  // optimizer steps done
  virtual int64_t total_steps() const = 0;
  virtual const TrainOptions& options() const = 0;
  // True when no gradient is half accumulated (checkpoints, pauses and exports happen here).
  virtual bool at_step_boundary() const = 0;
  // True between micro-steps (no chunk of a micro-batch done with more to go).
  virtual bool at_micro_boundary() const = 0;

  // Rows per chunk (options().hyper.chunk_rows, or the whole micro-batch when that is 0, unless
  // SetChunkRows chose).
  virtual int chunk_rows() const = 0;
  // Times forward + backward of `rows` rows of the next micro-batch (drawing it is not timed)
  // without training on them (their gradients are zeroed; the run's losses are unchanged):
  // seconds. For calibrating chunk_rows before the run's first chunk.
  virtual absl::StatusOr<double> ProbeChunk(int rows) = 0;
  // Sets chunk_rows (1 .. batch_size): only before the run's first chunk.
  virtual void SetChunkRows(int rows) = 0;
  // Moves the schedule's end (total_steps(), where the learning rate reaches min_lr) to `steps`
  // from now on: a time-budgeted job's plan. At least step() + 1.
  virtual void SetTotalSteps(int64_t steps) = 0;

  // One chunk of the current micro-step; returns the step's metrics when it completed an
  // optimizer step. FAILED_PRECONDITION once step() == total_steps(); INTERNAL for a non-finite
  // loss.
  virtual absl::StatusOr<std::optional<StepMetrics>> RunChunk() = 0;
  // The chunks of one micro-step (in-process use: benchmarks, tests).
  absl::StatusOr<std::optional<StepMetrics>> MicroStep();

  // Held-out evaluation in chunks (no gradients, no effect on training's randomness): Start,
  // then RunEvalChunk until it returns the metrics (without samples).
  virtual void StartEvaluation() = 0;
  virtual absl::StatusOr<std::optional<EvalMetrics>> RunEvalChunk() = 0;
  // A host copy at a step boundary, with what an evaluation at this step samples (seeded by
  // the step); FAILED_PRECONDITION elsewhere.
  virtual absl::StatusOr<TrainSnapshot> Snapshot() = 0;

  virtual int64_t parameter_count() const = 0;

  // In-process conveniences (benchmarks, tests; the server runs these pieces on its device loop
  // and I/O threads instead): the whole evaluation with its samples generated right here; a
  // checkpoint of the current step; an export of it.
  absl::StatusOr<EvalMetrics> Evaluate();
  absl::Status SaveCheckpoint(const std::string& checkpoints_dir);
  absl::Status ExportModel(const std::string& dir, const ModelProvenance& provenance);
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

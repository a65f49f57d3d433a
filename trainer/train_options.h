// TrainOptions: a training job's spec resolved for the trainer — absolute dataset path, the full
// model config, the model to start from, hyperparameters with defaults applied. Torch-free and
// proto-free: the server converts and validates a tandem.v1.TrainJobSpec into this
// (server/train_spec.h), tests build it directly.
#ifndef TANDEM_TRAINER_TRAIN_OPTIONS_H_
#define TANDEM_TRAINER_TRAIN_OPTIONS_H_

#include <cstdint>
#include <string>

#include "models/diffusion/diffusion_config.h"
#include "models/llama/llama_config.h"
#include "models/model_dir.h"

namespace tandem {

inline constexpr char kAdamW[] = "adamw";
inline constexpr char kMuon[] = "muon";
inline constexpr char kFp32[] = "fp32";
inline constexpr char kBf16Mixed[] = "bf16-mixed";
inline constexpr char kAutoPrecision[] = "auto";

struct Hyperparams {
  int64_t steps = 1000;      // optimizer steps in all
  int batch_size = 16;       // sequences or images per micro-step
  int grad_accum = 1;        // micro-steps per optimizer step
  // Rows (sequences or images) per chunk of a micro-step: the unit the device's scheduler
  // interleaves with inference. 0: the whole micro-batch. Fixed for a run: it sets the order in
  // which gradients are summed.
  int chunk_rows = 0;
  // > 0: a time-budgeted job — it trains for this many seconds of wall-clock time. `steps` is
  // then planned from the measured rate early in the run (the schedule reaching min_lr at the
  // budget) and stored; the final evaluation and deployment still happen.
  double max_seconds = 0;
  // > 0: keep an exponential moving average of the weights with this decay (e.g. 0.999) and
  // serve, export and evaluate it (trainer/ema.h).
  double ema_decay = 0;
  // Image jobs, > 0: weight each sample's loss by min(SNR(t), gamma) / SNR(t) (eps) or
  // / (SNR(t) + 1) (v): min-SNR-gamma (Hang et al., 2023). 0: unweighted MSE.
  double min_snr_gamma = 0;
  // Text jobs, in [0, 1): residual dropout — each element of the token embeddings and of every
  // attention and feed-forward output is zeroed with this probability (and the rest scaled by
  // 1 / (1 - p)) in training; evaluation and serving use the whole network. 0: off.
  double dropout = 0;
  // "adamw" (kAdamW): AdamW for every parameter. "muon" (kMuon): Muon for the hidden 2-D
  // matrices (momentum orthogonalised by Newton-Schulz, scaled to AdamW's update size, so the
  // same lr applies) and AdamW for embeddings, the classifier, gains and biases
  // (trainer/optimizer.h).
  std::string optimizer = "adamw";
  // "fp32" (kFp32): float32 throughout. "bf16-mixed" (kBf16Mixed, text jobs): the training
  // forward's and backward's matrix products (the projections, the classifier, Muon's
  // Newton-Schulz iterations) take bfloat16 operands, accumulating in float32; the weights,
  // gradients, optimizer state, norms, attention, loss and every evaluation stay float32, so
  // what is evaluated is what serving runs. "auto" (kAutoPrecision): "bf16-mixed" for a text job
  // on a GPU or on a CPU with bfloat16 matrix instructions (AVX-512 BF16, AMX), else "fp32";
  // the trainer resolves it when a run starts (ResolvePrecision, trainer/train_common.h).
  std::string precision = "fp32";
  double lr = 1e-3;          // peak learning rate
  double min_lr = 1e-4;      // cosine floor
  int64_t warmup_steps = 100;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double grad_clip = 1.0;    // global-norm clip; 0 = none
  // Decay norms' gains, biases and embeddings too (normally they are exempt).
  bool decay_norms_and_embeddings = false;
  int64_t eval_every = 200;        // 0 = only at the end
  int64_t checkpoint_every = 200;  // 0 = only at the end and on pause
  uint64_t seed = 1;
  double caption_dropout = 0.1;    // image: probability a caption is replaced by the empty one
  // Text: every round(1 / holdout_fraction)-th document is held out (0.1: every 10th).
  // Image: the fraction of a folder dataset held out (Fashion-MNIST uses its test split).
  double holdout_fraction = 0.1;
};

struct TrainOptions {
  std::string job_id;        // for provenance and logs
  ModelKind kind = ModelKind::kText;
  std::string dataset_path;  // absolute, inside --data_dir
  // Every dataset file is opened beneath this folder (--data_dir), re-checked by the kernel at
  // the open (base/confined_open.h); empty: unconfined (benchmarks, tests).
  std::string dataset_root;
  LlamaConfig llama;         // kText: the model to train (from the spec or init_from)
  DiffusionConfig diffusion; // kImage
  // Model directory to fine-tune from (its weights and tokenizer); empty = fresh weights.
  std::string init_from_dir;
  Hyperparams hyper;
  std::string device = "cpu";
  int keep_checkpoints = 3;  // newest checkpoints kept on disk
};

}  // namespace tandem

#endif  // TANDEM_TRAINER_TRAIN_OPTIONS_H_

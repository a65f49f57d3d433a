// Training jobs as the job layer sees them: what was asked (JobSpec), what happened (Job, with
// its latest StepRecord and best EvalRecord) and what is told to watchers (JobEvent). Plain
// values, proto-free: server/api converts them to and from tandem.v1 messages (job_proto.h), the
// job store keeps them as JSON (job_json.h). Field meanings follow tandem/v1/training.proto.
#ifndef TANDEM_SERVER_JOBS_JOB_H_
#define TANDEM_SERVER_JOBS_JOB_H_

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/time/time.h"
#include "models/model_dir.h"
#include "trainer/train_options.h"

namespace tandem {

// Numbered as tandem.v1.TrainJobState.
enum class JobState { kQueued = 1, kRunning = 2, kPaused = 3, kSucceeded = 4, kFailed = 5,
                      kCancelled = 6 };

inline bool IsFinal(JobState s) {
  return s == JobState::kSucceeded || s == JobState::kFailed || s == JobState::kCancelled;
}
// "QUEUED", "RUNNING", ... as in the .proto.
const char* JobStateName(JobState s);

// In a spec, 0 (or empty) means "unset: the default"; ResolveTrainSpec writes the defaults in.
struct TextModelSpec {
  int vocab_size = 0;
  int dim = 0;
  int layers = 0;
  int heads = 0;
  int kv_heads = 0;
  int seq_len = 0;
  int hidden_dim = 0;
  bool tie_embeddings = false;
};

struct ImageModelSpec {
  int image_size = 0;
  int channels = 0;
  std::vector<int> unet_widths;
  int res_blocks = 0;
  std::vector<int> attention_levels;
  int text_dim = 0;
  int text_layers = 0;
  int text_heads = 0;
  int text_seq_len = 0;
  int vocab_size = 0;
  int diffusion_steps = 0;
  bool v_prediction = false;
};

// Hyperparameters with every field 0 = unset (the trainer's Hyperparams carries the trainer's
// own defaults instead).
inline Hyperparams UnsetHyperparams() {
  Hyperparams h;
  h.steps = 0;
  h.batch_size = 0;
  h.grad_accum = 0;
  h.optimizer.clear();
  h.precision.clear();
  h.lr = 0;
  h.min_lr = 0;
  h.warmup_steps = 0;
  h.weight_decay = 0;
  h.beta1 = 0;
  h.beta2 = 0;
  h.grad_clip = 0;
  h.decay_norms_and_embeddings = false;
  h.eval_every = 0;
  h.checkpoint_every = 0;
  h.seed = 0;
  h.caption_dropout = 0;
  h.holdout_fraction = 0;
  h.chunk_rows = 0;
  h.max_seconds = 0;
  h.ema_decay = 0;
  h.min_snr_gamma = 0;
  h.dropout = 0;
  return h;
}

struct JobSpec {
  std::string name;
  std::optional<ModelKind> kind;  // unset: invalid
  std::string dataset;            // relative to --data_dir
  std::optional<TextModelSpec> text_model;
  std::optional<ImageModelSpec> image_model;
  std::string init_from;  // a served model's name
  std::optional<Hyperparams> hyper;  // unset: invalid (steps is required); 0 fields = default
  std::string deploy_as;
  bool deploy_on_improvement = false;
  int priority = 0;
  // Who submitted it: the client's name (server/api/auth.h; empty without auth). Set by the
  // server, never taken from the request.
  std::string owner;
};

// One optimizer step, as recorded and reported.
struct StepRecord {
  int64_t step = 0;
  int64_t total_steps = 0;
  double loss = 0;
  double lr = 0;
  double grad_norm = 0;
  double tokens_per_second = 0;
  double images_per_second = 0;
  double eta_seconds = 0;
};

struct EvalRecord {
  int64_t step = 0;
  double loss = 0;
  double bits_per_byte = 0;  // text jobs
  std::string text_sample;
  std::string image_sample_png;
  bool improved = false;
};

struct Job {
  std::string id;
  JobSpec spec;
  JobState state = JobState::kQueued;
  std::string error;  // why it FAILED
  absl::Time created = absl::InfinitePast();  // InfinitePast: not yet
  absl::Time started = absl::InfinitePast();
  absl::Time finished = absl::InfinitePast();
  std::optional<StepRecord> latest;
  std::optional<EvalRecord> best_eval;
  int64_t checkpoint_step = 0;
  std::string deployed_as;
  int64_t deployed_step = 0;
  int attempt = 0;
  std::vector<StepRecord> history;  // only when asked for (Get with include_history)
};

struct JobEvent {
  struct Snapshot {
    Job job;
  };
  struct Log {
    std::string text;
  };
  absl::Time time;
  std::variant<Snapshot, JobState, StepRecord, EvalRecord, Log> event;

  static JobEvent Now(decltype(event) e) { return JobEvent{absl::Now(), std::move(e)}; }
};

}  // namespace tandem

#endif  // TANDEM_SERVER_JOBS_JOB_H_

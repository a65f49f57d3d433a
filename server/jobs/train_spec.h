// Training-job specs: checks a JobSpec (server/jobs/job.h) and resolves it into the trainer's
// TrainOptions before anything is allocated — the dataset confined to --data_dir (no absolute
// paths, no "..", no symlink leading out), the model config's invariants, hyperparameter ranges
// with defaults for unset (zero) fields, init_from / deploy_as against the registry. The
// estimate of the training memory (EstimateTrainingBytes) is the placement's to check against
// the devices' budgets. Torch-free.
//
// Status codes: INVALID_ARGUMENT for a malformed spec or an unusable dataset, NOT_FOUND for a
// dataset or init_from model that does not exist, FAILED_PRECONDITION when the server has no
// --data_dir.
#ifndef TANDEM_SERVER_JOBS_TRAIN_SPEC_H_
#define TANDEM_SERVER_JOBS_TRAIN_SPEC_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "server/core/model_registry.h"
#include "server/jobs/job.h"
#include "server/jobs/time_budget.h"  // kUnplannedSteps
#include "trainer/train_options.h"

namespace tandem {

struct TrainSpecContext {
  std::string data_dir;            // --data_dir
  const ModelRegistry* registry = nullptr;
  int keep_checkpoints = 3;
  // At submission: also read a text dataset of at most kMaxCheckedDatasetBytes and check what
  // only the data shows — that it loads (UTF-8, enough documents to hold some out) and that
  // text_model.vocab_size has room for its characters (MinimumVocabSize). Larger datasets are
  // checked when the job runs.
  bool check_dataset_content = false;
};
inline constexpr int64_t kMaxCheckedDatasetBytes = int64_t{16} << 20;

// Fills the defaults of unset fields into `spec` (so the stored spec says what runs) and returns
// the resolved options. options.job_id and options.device are left for the caller.
absl::StatusOr<TrainOptions> ResolveTrainSpec(JobSpec* spec, const TrainSpecContext& context);

// Bytes a training step needs (weights, gradients, AdamW moments, activations), estimated.
int64_t EstimateTrainingBytes(const TrainOptions& options);

// Half of the machine's physical memory: the default --train_memory_limit_mb.
int64_t DefaultTrainingMemoryBudget();

}  // namespace tandem

#endif  // TANDEM_SERVER_JOBS_TRAIN_SPEC_H_

// EvalSampler: an evaluation's samples (a text completion, or a grid of images), generated as
// ordinary inference work on the job's device loop — batched with, and yielding to, online
// requests (they run at kSamplePriority, below every priority a client may ask for). The model
// is the one exported from the evaluation's snapshot, loaded as an entry that is not published.
// Sample() blocks its caller (a job's thread) until the loop has produced them. Thread-safe.
#ifndef TANDEM_SERVER_JOBS_EVAL_SAMPLER_H_
#define TANDEM_SERVER_JOBS_EVAL_SAMPLER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/core/device_loop.h"
#include "server/core/model_registry.h"
#include "trainer/trainer.h"

namespace tandem {

inline constexpr int kSamplePriority = -1000;  // clients may ask for [-100, 100]

struct EvalSampleResult {
  std::string text;  // text models
  std::string png;   // image models: the grid
};

// Generates `samples` from the model directory at `model_dir` (an export of the evaluated step)
// on `loop`. `registry_options` say how instances are built (the loop's device among them).
absl::StatusOr<EvalSampleResult> SampleOnLoop(const std::string& model_dir,
                                              const EvalSamples& samples, DeviceLoop* loop,
                                              const RegistryOptions& registry_options);

}  // namespace tandem

#endif  // TANDEM_SERVER_JOBS_EVAL_SAMPLER_H_

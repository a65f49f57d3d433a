// The learning-rate schedule: linear warmup from lr/warmup_steps to lr over the first
// warmup_steps steps, then cosine decay from lr to min_lr at the last step. Torch-free.
#ifndef TANDEM_TRAINER_LR_SCHEDULE_H_
#define TANDEM_TRAINER_LR_SCHEDULE_H_

#include <cstdint>

#include "trainer/train_options.h"

namespace tandem {

// The rate of the step with 0-based index `step` (0 .. hyper.steps - 1):
//   step < warmup:  lr * (step + 1) / warmup
//   otherwise:      min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2,
//                   p = (step - warmup) / max(1, steps - 1 - warmup)   (p = 1 at the last step)
double LearningRate(const Hyperparams& hyper, int64_t step);

}  // namespace tandem

#endif  // TANDEM_TRAINER_LR_SCHEDULE_H_

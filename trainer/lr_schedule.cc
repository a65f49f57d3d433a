#include "trainer/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace tandem {

double LearningRate(const Hyperparams& hyper, int64_t step) {
  const int64_t warmup = std::max<int64_t>(0, hyper.warmup_steps);
  if (step < warmup) {
    return hyper.lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  }
  const int64_t span = std::max<int64_t>(1, hyper.steps - 1 - warmup);
  const double p = std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(span));
  return hyper.min_lr + (hyper.lr - hyper.min_lr) * 0.5 * (1.0 + std::cos(M_PI * p));
}

}  // namespace tandem

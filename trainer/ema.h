// Ema: an exponential moving average of a run's parameters — the weights a job serves, exports
// and evaluates when its spec asks for one (Hyperparameters.ema_decay). After every optimizer
// step, ema = d * ema + (1 - d) * w with d = min(decay, (1 + step) / (10 + step)) (a short warm-up,
// so the average does not drag the random initialisation along). Its state travels in the
// checkpoint beside the optimizer's moments ("ema.<name>").
//
// Internal to the trainer's LibTorch translation units (this header includes torch). Not
// thread-safe.
#ifndef TANDEM_TRAINER_EMA_H_
#define TANDEM_TRAINER_EMA_H_

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "models/formats/safetensors.h"
#include "trainer/optimizer.h"

namespace tandem {

class Ema {
 public:
  // Starts at the parameters' current values.
  Ema(const std::vector<Optimizer::Param>& params, double decay);

  // After the optimizer step that completed step `step` (1 for the first).
  void Update(int64_t step);
  // "ema.<name>" for every parameter.
  TensorMap State() const;
  // From a checkpoint's optimizer state; a checkpoint without EMA entries (written before the
  // run kept one) starts the average at the current weights.
  absl::Status LoadState(const TensorMap& state);

  // Puts the average in the parameters' place (SwapIn) and the trained weights back (SwapOut).
  void SwapIn();
  void SwapOut();

 private:
  std::vector<Optimizer::Param> params_;
  std::vector<torch::Tensor> average_;  // same shapes as params_
  std::vector<torch::Tensor> held_;     // the trained weights while swapped out
  const double decay_;
};

}  // namespace tandem

#endif  // TANDEM_TRAINER_EMA_H_

// AdamW (Loshchilov & Hutter): Adam with weight decay decoupled from the gradient,
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)  +  lr * wd * p   (decayed params)
// with global-norm gradient clipping first. Internal to the trainer's LibTorch TUs (this header
// includes torch); the optimizer state round-trips through TensorMaps for checkpoints.
#ifndef TANDEM_TRAINER_ADAMW_H_
#define TANDEM_TRAINER_ADAMW_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "models/formats/safetensors.h"

namespace tandem {

// The default decay rule: matrices and convolution kernels decay; norms' gains, biases (1-D
// tensors) and embeddings (names containing "embed") do not — unless `decay_all`.
bool DecayByDefault(const std::string& name, const torch::Tensor& param, bool decay_all);

class AdamW {
 public:
  struct Param {
    std::string name;
    torch::Tensor value;  // a leaf with requires_grad; the optimizer updates it in place
    bool decay = true;
  };
  struct Options {
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  };

  AdamW(std::vector<Param> params, Options options);

  // Clips the gradients to `grad_clip` global L2 norm (0: no clipping), applies one update at
  // `lr`, zeroes the gradients. Returns the norm before clipping. Parameters without a gradient
  // are skipped (their moments do not move).
  double Step(double lr, double grad_clip);
  // Gradient global L2 norm (for reporting without stepping).
  double GradNorm() const;
  void ZeroGrad();

  int64_t steps() const { return steps_; }
  const std::vector<Param>& params() const { return params_; }

  // Moments as float32 CPU tensors "m.<name>" and "v.<name>".
  TensorMap State() const;
  // Restores moments saved by State() and the step count; INVALID_ARGUMENT on a missing tensor
  // or a shape mismatch.
  absl::Status LoadState(const TensorMap& state, int64_t steps);

 private:
  std::vector<Param> params_;
  std::vector<torch::Tensor> m_, v_;  // per param, same shape and device
  Options options_;
  int64_t steps_ = 0;
};

}  // namespace tandem

#endif  // TANDEM_TRAINER_ADAMW_H_

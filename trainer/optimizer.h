// A training run's optimizer: AdamW for every parameter, or Muon for the hidden matrices and
// AdamW for the rest. Global-norm gradient clipping comes first either way.
//
// AdamW (Loshchilov & Hutter): Adam with weight decay decoupled from the gradient,
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)  +  lr * wd * p   (decayed params)
// Muon (Jordan et al., 2024; the update scale of Liu et al., 2025, "Muon is scalable"), for a
// parameter marked `orthogonalize` (a 2-D matrix [rows, cols]):
//   m = mu m + g;  u = NewtonSchulz5(g + mu m)            (Nesterov momentum, orthogonalised)
//   p -= lr * 0.2 * sqrt(max(rows, cols)) * u  +  lr * wd * p
// NewtonSchulz5 maps a matrix to roughly U V^T of its SVD (its singular values into about
// [0.7, 1.2]) with five quintic iterations; the 0.2 sqrt(max) scale gives the update the RMS of a
// typical AdamW update, so one learning rate and schedule serve both kinds of parameter.
//
// Internal to the trainer's LibTorch TUs (this header includes torch); the state round-trips
// through TensorMaps for checkpoints ("m.<name>" and "v.<name>" for every parameter; a Muon
// parameter's momentum is its "m.", its "v." stays zero), so a run resumes exactly.
#ifndef TANDEM_TRAINER_OPTIMIZER_H_
#define TANDEM_TRAINER_OPTIMIZER_H_

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

// Which parameters Muon updates when a run asks for it: the hidden 2-D matrices — not
// embeddings (names containing "embed": a lookup table, not a linear map), not the LLM's
// classifier ("output.weight"), not gains, biases or convolution kernels.
bool OrthogonalizeByDefault(const std::string& name, const torch::Tensor& param);

// Orthogonalises each matrix of `g` ([rows, cols] or [n, rows, cols]) with `steps` quintic
// Newton-Schulz iterations (coefficients 3.4445, -4.7750, 2.0315): X = g / |g|_F, then
// X <- a X + (b A + c A^2) X with A = X X^T, on the wider orientation. Same shape as `g`.
torch::Tensor NewtonSchulz5(const torch::Tensor& g, int steps = 5);

class Optimizer {
 public:
  struct Param {
    std::string name;
    torch::Tensor value;  // a leaf with requires_grad; the optimizer updates it in place
    bool decay = true;
    bool orthogonalize = false;  // Muon's update (a 2-D matrix), else AdamW's
  };
  struct Options {
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
    double muon_momentum = 0.95;
    // The Newton-Schulz iterations' operands: float32, or bfloat16 in a mixed-precision run
    // (as Muon's authors run them; the update returns to float32 before it is applied).
    torch::ScalarType newton_schulz_dtype = torch::kFloat;
  };

  Optimizer(std::vector<Param> params, Options options);

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
  void AdamUpdate(size_t i, const torch::Tensor& g, double lr);
  // The Muon updates of the parameters `group` (indices of same-shape matrices), batched.
  void MuonUpdate(const std::vector<size_t>& group, double grad_scale, double lr);

  std::vector<Param> params_;
  std::vector<torch::Tensor> m_, v_;  // per param, same shape and device
  std::vector<std::vector<size_t>> muon_groups_;  // orthogonalised params by shape
  Options options_;
  int64_t steps_ = 0;
};

}  // namespace tandem

#endif  // TANDEM_TRAINER_OPTIMIZER_H_

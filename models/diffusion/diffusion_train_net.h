// DiffusionTrainNet: the diffusion model of diffusion.cc (text encoder + U-Net with cross-
// attention) as differentiable LibTorch parameters, for training. The same architecture
// description (diffusion_weights.h: weight walk, safetensors names, text encoder, U-Net
// topology) and the same math as the serving forward, computed with plain autograd ops (conv2d,
// group_norm, layer_norm, linear, softmax attention, gelu, silu, nearest upsampling) instead of
// the serving path's batch-invariant, folded kernels; the time embedding is computed per row
// rather than tabulated, and each row's caption is encoded in the same forward.
//
// This header includes <torch/torch.h>: include it only from the trainer's LibTorch translation
// units and tests. Methods other than Create may throw c10::Error; callers catch at their torch
// boundary (torch_util::CatchTorch, not RunTorch: InferenceMode would disable autograd).
// Not thread-safe.
#ifndef TANDEM_MODELS_DIFFUSION_DIFFUSION_TRAIN_NET_H_
#define TANDEM_MODELS_DIFFUSION_DIFFUSION_TRAIN_NET_H_

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "models/diffusion/diffusion_config.h"
#include "models/formats/safetensors.h"

namespace tandem {

namespace diffusion_net {
struct Weights;
}  // namespace diffusion_net

class DiffusionTrainNet {
 public:
  // Parameters on `device` ("cpu", "cuda:N") from `weights` (every tensor of the config with its
  // shape: INVALID_ARGUMENT naming the first missing, misshapen or unexpected one).
  static absl::StatusOr<std::unique_ptr<DiffusionTrainNet>> Create(const DiffusionConfig& config,
                                                                   const TensorMap& weights,
                                                                   const std::string& device);
  ~DiffusionTrainNet();

  const DiffusionConfig& config() const { return config_; }
  const torch::Device& device() const { return device_; }
  // (safetensors name, leaf tensor with requires_grad) in the architecture walk's order (text
  // encoder, then the U-Net from conv_in to the output head). The optimizer updates them in
  // place; the forward reads them.
  const std::vector<std::pair<std::string, torch::Tensor>>& parameters() const { return params_; }
  int64_t parameter_count() const;

  // Captions (token ids without BOS) as the model reads them, on the CPU: [B, L] int64, row =
  // BOS (1), the ids cut to L - 1, then 0 padding (L = text_seq_len). An empty caption is the
  // unconditional one (BOS only).
  static torch::Tensor CaptionIds(const std::vector<std::vector<int32_t>>& captions,
                                  int text_seq_len);

  // x_t [B, C, H, W] float32, t [B] int64 in [0, T), caption_ids [B, L] int64 (CaptionIds; all
  // on device()) -> the prediction [B, C, H, W] (eps or v per config().prediction). Key
  // positions after the last nonzero id of a row are padding (masked); position 0 (BOS) never
  // is. Differentiable with respect to parameters() (and x_t).
  torch::Tensor Forward(const torch::Tensor& x_t, const torch::Tensor& t,
                        const torch::Tensor& caption_ids) const;

  // The parameters as float32 CPU tensors under their safetensors names (checkpoints, export;
  // CreateDiffusionModel and Create load them).
  TensorMap ExportWeights() const;

 private:
  DiffusionTrainNet(DiffusionConfig config, torch::Device device);

  DiffusionConfig config_;
  torch::Device device_;
  std::unique_ptr<diffusion_net::Weights> w_;  // the very tensors of params_, by role
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  torch::Tensor sinusoid_;  // [T, W0] timestep sinusoid on the device (no gradient)
};

}  // namespace tandem

#endif  // TANDEM_MODELS_DIFFUSION_DIFFUSION_TRAIN_NET_H_

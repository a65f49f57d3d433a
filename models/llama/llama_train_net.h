// LlamaTrainNet: the Llama decoder of llama.cc as differentiable LibTorch parameters, for
// training. Same math and the same safetensors weight names (see models/llama.h); plain autograd
// ops instead of the serving path's fused, cache-based kernels. The forward is causal over whole
// packed sequences (no KV cache).
//
// This header includes <torch/torch.h>: include it only from the trainer's LibTorch translation
// units and tests. Methods may throw c10::Error; callers catch at their torch boundary
// (torch_util::CatchTorch). Not thread-safe.
#ifndef TANDEM_MODELS_LLAMA_LLAMA_TRAIN_NET_H_
#define TANDEM_MODELS_LLAMA_LLAMA_TRAIN_NET_H_

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "models/llama/llama_config.h"
#include "models/formats/safetensors.h"

namespace tandem {

class LlamaTrainNet {
 public:
  // Parameters on `device` from `weights` (every tensor of the config, with its shape:
  // INVALID_ARGUMENT naming the first wrong one).
  static absl::StatusOr<std::unique_ptr<LlamaTrainNet>> Create(const LlamaConfig& config,
                                                               const TensorMap& weights,
                                                               const std::string& device);

  const LlamaConfig& config() const { return config_; }
  const torch::Device& device() const { return device_; }
  // (safetensors name, leaf tensor with requires_grad), in name order.
  const std::vector<std::pair<std::string, torch::Tensor>>& parameters() const { return params_; }

  // tokens: [B, T] int64 (T <= seq_len), positions 0..T-1 -> logits [B, T, vocab] float32.
  // `dropout`, when defined: [B, DropoutSites(), T, dim] float32 multipliers (0, or 1 / (1 - p)
  // to keep the expectation) for the token embeddings (site 0) and for the attention (site
  // 1 + 2l) and feed-forward (site 2 + 2l) outputs of layer l before they join the residual
  // stream. The caller draws them, so that the masks of a row do not depend on the rows beside
  // it (a micro-batch cut into chunks trains as the whole would).
  // `matmul_dtype`: the operands of the projections and the classifier — float32, or bfloat16
  // for mixed-precision training (products accumulate in float32 and come back as float32, so
  // the residual stream, norms, rotary, attention and the logits stay float32; the weights'
  // gradients arrive in float32 through the casts).
  torch::Tensor Forward(const torch::Tensor& tokens, const torch::Tensor& dropout = {},
                        torch::ScalarType matmul_dtype = torch::kFloat) const;
  int64_t DropoutSites() const { return 1 + 2 * int64_t{config_.n_layers}; }

  // The parameters as float32 CPU tensors (for checkpoints and model export).
  TensorMap ExportWeights() const;

 private:
  LlamaTrainNet(LlamaConfig config, torch::Device device) : config_(config), device_(device) {}
  const torch::Tensor& P(const std::string& name) const;

  LlamaConfig config_;
  torch::Device device_;
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  std::map<std::string, torch::Tensor> by_name_;
  torch::Tensor cos_, sin_;  // [seq_len, head_dim/2] rotary tables (no gradient)
};

// Causal grouped-query self-attention, the training forward's: q [B, T, H, hd], k and v
// [B, T, KV, hd] (after RoPE), query head h attending with kv head h / (H / KV), scores scaled
// by `scale` -> [B, T, H*hd]. `fused`: one autograd function over the CPU kernels of
// train_attention.h (float32 CPU tensors only; half the work, as it skips the masked scores);
// otherwise ATen ops on any device. The two agree within float rounding.
torch::Tensor CausalSelfAttention(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, double scale, bool fused);

// The element-wise layers of the training forward. `fused`: one autograd function each over the
// CPU kernels of train_elementwise.h (float32 CPU tensors only: one pass forward, one backward);
// otherwise ATen ops on any device. The two agree within float rounding.
// x: [..., dim], gain [dim] -> x * rsqrt(mean(x^2) + eps) * gain.
torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& gain, double eps, bool fused);
// a, b: the same shape -> silu(a) * b.
torch::Tensor SwiGlu(const torch::Tensor& a, const torch::Tensor& b, bool fused);
// x: [B, T, H, hd]; cos, sin: [T, hd/2] -> every head's pairs (2i, 2i+1) rotated by the angle
// of (t, i) (RoPE).
torch::Tensor Rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                   bool fused);

}  // namespace tandem

#endif  // TANDEM_MODELS_LLAMA_LLAMA_TRAIN_NET_H_

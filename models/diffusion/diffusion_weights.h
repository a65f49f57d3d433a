// The one description of the diffusion model's architecture, shared by the serving model
// (diffusion.cc) and the training net (diffusion_train_net.cc): the weights as plain tensors in
// structs, the walk that names, shapes, loads or draws them (BuildWeights), the text encoder,
// the U-Net's topology (WalkUNet: levels, skips, resampling, output head) and the timestep
// sinusoid. The architecture and the safetensors names are documented at the top of
// models/diffusion.cc. What differs between serving and training is only how a block computes
// (batch-invariant, folded kernels there; plain autograd ops here), which each side supplies to
// WalkUNet.
//
// Internal: this header includes <torch/torch.h>; include it only from LibTorch translation
// units (models/diffusion*.cc). Functions may throw c10::Error; callers catch at their torch
// boundary (torch_util::RunTorch / CatchTorch).
#ifndef TANDEM_MODELS_DIFFUSION_DIFFUSION_WEIGHTS_H_
#define TANDEM_MODELS_DIFFUSION_DIFFUSION_WEIGHTS_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/diffusion/diffusion_config.h"
#include "models/image_model.h"

namespace tandem::diffusion_net {

constexpr int64_t kBosId = 1;      // first token of every caption
constexpr double kNormEps = 1e-5;  // GroupNorm and LayerNorm

// The config after DiffusionConfig::Normalize (INVALID_ARGUMENT naming the field otherwise).
absl::StatusOr<DiffusionConfig> CheckedConfig(const DiffusionConfig& config);

// ---------------------------------------------------------------------------------------------
// Weights. BuildWeights walks the architecture and asks a Fetch for every tensor by name, shape
// and initialisation: it lists the expected tensors, loads them, or draws them.

enum class Init { kOne, kZero, kFanIn, kEmbedding };
using Fetch =
    std::function<torch::Tensor(const std::string& name, std::vector<int64_t> shape, Init init)>;

struct NormW {
  torch::Tensor w, b;  // [n], [n]
};
struct LinearW {
  torch::Tensor w;   // [out, in]
  torch::Tensor b;   // [out], undefined without a bias
  torch::Tensor wt;  // [in, out] contiguous, for serving's per-row GEMMs (filled at its load)
};
struct ConvW {
  torch::Tensor w, b;  // [out, in, k, k], [out]
  int64_t stride = 1, padding = 1;
};
struct ResW {
  int64_t in = 0, out = 0;
  int index = 0;  // position among the res blocks (serving's per-caption text projections)
  NormW norm1, norm2;
  ConvW conv1, conv2, skip;  // skip.w undefined when in == out
  LinearW time;              // [out, E]
  LinearW text;              // [out, D] of the pooled caption; w undefined without pooled_text
  torch::Tensor time_table;  // serving: [T, out] time(silu(temb(t))) for every t (filled at load)
};
struct AttnW {
  int64_t c = 0, heads = 0;
  int index = 0;  // position among the attention blocks (serving's cross-attention keys/values)
  NormW norm, ln1, ln2, ln3;
  LinearW qkv, self_out, q, kv, cross_out, fc1, fc2, proj;
};
struct LevelW {
  std::vector<ResW> res;
  std::vector<AttnW> attn;  // one per res block at attention levels, else empty
  ConvW resample;           // downsample (encoder) / upsample conv (decoder); w may be undefined
};
struct TextLayerW {
  NormW norm1, norm2;
  LinearW qkv, out, fc1, fc2;
};
struct Weights {
  torch::Tensor tok_embed;  // [V, D]
  torch::Tensor pos_embed;  // [L, D]
  std::vector<TextLayerW> text_layers;
  NormW text_norm;
  LinearW time1, time2;
  ConvW conv_in;
  std::vector<LevelW> down, up;  // indexed by level
  ResW mid1, mid2;
  AttnW mid_attn;
  NormW out_norm;
  ConvW out_conv;
  int attention_blocks = 0;
  int res_blocks = 0;
};

// Every tensor of the (normalized) config, in one fixed order: the text encoder, then the U-Net
// from conv_in to the output head.
Weights BuildWeights(const DiffusionConfig& c, const Fetch& f);

struct NamedShape {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<NamedShape> ExpectedTensors(const DiffusionConfig& c);

// Checks the weights' names and shapes against the config: INVALID_ARGUMENT naming the first
// missing, misshapen or unexpected tensor.
absl::Status CheckWeights(const DiffusionConfig& c, const TensorMap& weights);

// The weights (already checked with CheckWeights) as float32 tensors on `device`, in
// BuildWeights' order; `each` (may be empty) sees every tensor as it is loaded and may change it in
// place (e.g. requires_grad_).
absl::StatusOr<Weights> LoadWeights(
    const DiffusionConfig& c, const TensorMap& weights, const torch::Device& device,
    const std::function<void(const std::string& name, torch::Tensor& t)>& each);

// Calls fn on every residual / attention block of the U-Net.
template <typename W, typename Fn>
void ForEachRes(W& w, Fn&& fn) {
  for (auto* levels : {&w.down, &w.up}) {
    for (auto& level : *levels) {
      for (auto& r : level.res) fn(r);
    }
  }
  fn(w.mid1);
  fn(w.mid2);
}
template <typename W, typename Fn>
void ForEachAttn(W& w, Fn&& fn) {
  for (auto* levels : {&w.down, &w.up}) {
    for (auto& level : *levels) {
      for (auto& a : level.attn) fn(a);
    }
  }
  fn(w.mid_attn);
}

// ---------------------------------------------------------------------------------------------
// Forward pieces common to serving and training.

// The timestep sinusoid, computed in double: [T, dim] float32 = [cos(t f_i) | sin(t f_i)],
// f_i = 10000^(-i/half), i < half = dim/2 (a zero column last when dim is odd). CPU.
torch::Tensor Sinusoid(int64_t timesteps, int64_t dim);

// The text encoder: ids [B, L] int64, additive key mask [B, 1, 1, L] (0 for caption positions,
// -inf for padding) -> token states [B, L, D]. Plain ops (autograd works through it).
torch::Tensor EncodeText(const Weights& w, const DiffusionConfig& c, const torch::Tensor& ids,
                         const torch::Tensor& mask);

// A caption's pooled states: the mean of states [B, L, D] over each row's caption positions (mask
// [B, 1, 1, L] 0 there, -inf at padding) -> [B, D]. What every res block projects when the config
// has pooled_text.
torch::Tensor PoolText(const torch::Tensor& states, const torch::Tensor& mask);

// Nearest 2x upsampling: [R, c, H, W] -> [R, c, 2H, 2W] (exact copies, batch-invariant).
torch::Tensor Upsample2x(const torch::Tensor& x);

// The U-Net's topology over R rows: x [R, C, H, W] -> [R, C, H, W]. `net` supplies the blocks:
//   net.Conv(const ConvW&, x) -> conv output  net.Res(const ResW&, x, time, text) -> [R, out, H, W]
//   net.Attn(const AttnW&, x, text) -> same shape net.Silu(x) -> silu(x) (may reuse x's storage)
// `time` and `text` are passed through to the blocks unchanged (each side's own representation
// of the rows' timesteps and captions).
template <typename Net, typename Time, typename Text>
torch::Tensor WalkUNet(const DiffusionConfig& c, const Weights& w, const Net& net,
                       const torch::Tensor& x, const Time& time, const Text& text) {
  const int levels = static_cast<int>(c.unet_widths.size());
  torch::Tensor h = net.Conv(w.conv_in, x);  // [R, W0, H, W]
  std::vector<torch::Tensor> skips = {h};
  for (int l = 0; l < levels; ++l) {
    const LevelW& level = w.down[l];
    for (size_t r = 0; r < level.res.size(); ++r) {
      h = net.Res(level.res[r], h, time, text);  // [R, W_l, H_l, W_l]
      if (!level.attn.empty()) h = net.Attn(level.attn[r], h, text);
      skips.push_back(h);
    }
    if (level.resample.w.defined()) {
      h = net.Conv(level.resample, h);  // [R, W_l, H_l/2, W_l/2]
      skips.push_back(h);
    }
  }
  h = net.Res(w.mid1, h, time, text);
  h = net.Attn(w.mid_attn, h, text);
  h = net.Res(w.mid2, h, time, text);  // [R, W_last, H_last, W_last]
  for (int l = levels - 1; l >= 0; --l) {
    const LevelW& level = w.up[l];
    for (size_t r = 0; r < level.res.size(); ++r) {
      h = at::cat({h, skips.back()}, 1);  // [R, ch + skip, H_l, W_l]
      skips.pop_back();
      h = net.Res(level.res[r], h, time, text);  // [R, W_l, H_l, W_l]
      if (!level.attn.empty()) h = net.Attn(level.attn[r], h, text);
    }
    if (level.resample.w.defined()) {
      h = net.Conv(level.resample, Upsample2x(h));  // [R, W_l, 2 H_l, 2 W_l]
    }
  }
  h = at::group_norm(h, c.groups, w.out_norm.w, w.out_norm.b, kNormEps);  // [R, W0, H, W]
  return net.Conv(w.out_conv, net.Silu(h));                               // [R, C, H, W]
}

}  // namespace tandem::diffusion_net

#endif  // TANDEM_MODELS_DIFFUSION_DIFFUSION_WEIGHTS_H_

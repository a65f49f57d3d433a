// The LibTorch text-to-image diffusion model behind ImageModel: a small transformer text encoder
// and a U-Net with cross-attention (DiffusionConfig), the cosine noise schedule, and DDIM / DDPM
// sampling with classifier-free guidance. As in llama.cc, the weights are plain tensors in
// structs (loaded once, some folded or tabulated at load time), the run state is kept apart, and
// no torch exception leaves this file. The weight structs, their walk (names, shapes, loading,
// initialisation), the text encoder and the U-Net's topology are in diffusion_weights.h, shared
// with the training net (diffusion_train_net.h); this file supplies the serving kernels.
//
// Architecture (widths W_0..W_{n-1}, text width D, time width E = 4 W_0):
//   text: x = tok_embed[ids] + pos_embed; per layer (pre-norm)
//           x += out(mha(norm1 x, key padding mask)),  x += fc2(gelu(fc1(norm2 x)))  (4D MLP);
//         states = norm(x): [B, L, D]. A caption is BOS (id 1) + ids, cut to text_seq_len, padded
//         with 0; padded positions are masked out as keys (here and in cross-attention). The empty
//         caption (BOS only) is the unconditional caption of classifier-free guidance.
//   time: sinusoid(t) [W_0] (cos half, then sin half) -> fc1 -> SiLU -> fc2: temb [E].
//   pooled text: pool = the mean of the states over the caption's positions [D] (pooled_text).
//   res block (in -> out): h = conv1(silu(norm1 x)) + time(silu(temb)) [+ text(pool)];
//         h = conv2(silu(norm2 h)); return skip(x) + h   (skip: 1x1 conv when in != out).
//   attention block (c channels, attention_heads heads): t = groupnorm(x) as [H*W, c] tokens;
//         t += self_out(self-attention(ln1 t));  t += cross_out(cross-attention(q(ln2 t),
//         k/v from the text states, padding masked)); t += fc2(gelu(fc1(ln3 t))) (2c MLP);
//         return x + proj(t).
//   U-Net: conv_in (3x3, C -> W_0); encoder level l: res_blocks x [res block (-> W_l), attention
//         block if l is in attention_levels], then a stride-2 3x3 conv unless l is the last
//         level; the activation after conv_in, after every encoder block and after every
//         downsample is saved as a skip. Middle: res, attention, res. Decoder level l (last to
//         first): res_blocks + 1 x [concatenate the last saved skip, res block (-> W_l),
//         attention if l is listed], then (l > 0) nearest 2x upsample + 3x3 conv. Output:
//         conv_out(silu(out_norm h)) (3x3, W_0 -> C). GroupNorms use `groups` groups, eps 1e-5.
//
// Safetensors names (every weight [out, in] or [out, in, k, k], every bias [out]):
//   text.tok_embed.weight [V, D]             text.pos_embed.weight [L, D]
//   text.layers.{i}.norm1.{weight,bias}      text.layers.{i}.attn.qkv.{weight,bias} [3D, D]
//   text.layers.{i}.attn.out.{weight,bias}   text.layers.{i}.norm2.{weight,bias}
//   text.layers.{i}.mlp.fc1.{weight,bias} [4D, D]   text.layers.{i}.mlp.fc2.{weight,bias}
//   text.norm.{weight,bias}
//   unet.time.fc1.{weight,bias} [E, W_0]     unet.time.fc2.{weight,bias} [E, E]
//   unet.conv_in.{weight,bias} [W_0, C, 3, 3]
//   unet.down.{l}.res.{r}.*   unet.down.{l}.attn.{r}.*   unet.down.{l}.downsample.{weight,bias}
//   unet.mid.res.{0,1}.*      unet.mid.attn.*
//   unet.up.{l}.res.{r}.*     unet.up.{l}.attn.{r}.*     unet.up.{l}.upsample.{weight,bias}
//   unet.out.norm.{weight,bias}   unet.out.conv.{weight,bias} [C, W_0, 3, 3]
//   res block *:  norm1.{weight,bias} [in], conv1.{weight,bias} [out, in, 3, 3],
//                 time.{weight,bias} [out, E], text.{weight,bias} [out, D] (only with
//                 pooled_text), norm2.{weight,bias} [out],
//                 conv2.{weight,bias} [out, out, 3, 3], skip.{weight,bias} [out, in, 1, 1]
//                 (only when in != out)
//   attention block * (c channels): norm.{weight,bias} [c] (GroupNorm), ln1/ln2/ln3.{weight,bias},
//                 self.qkv.weight [3c, c] (q rows, k rows, v rows; no bias),
//                 self.out.{weight,bias} [c, c], cross.q.weight [c, c], cross.kv.weight [2c, D]
//                 (k rows, then v rows; no bias), cross.out.{weight,bias} [c, c],
//                 mlp.fc1.{weight,bias} [2c, c], mlp.fc2.{weight,bias} [c, 2c],
//                 proj.{weight,bias} [c, c]
// Heads are contiguous slices of the channels (head h: channels [h*hd, (h+1)*hd)).
//
// Sampling. A sample holds x_t, its own CPU generator (seeded with spec.seed: x_T first, then
// the DDIM-eta / DDPM noise of each step, so no sample's noise depends on another), the key and
// value projections of its caption (and negative caption) for every attention block (computed
// once, at StartSample), and its timestep list. Step stacks one row per sample (cond) plus one
// (uncond) when guidance != 1, each row with its own timestep and text; one U-Net forward; then,
// per sample, in float64: out = uncond + g (cond - uncond), eps / x_0 from it (v: x_0 =
// sqrt(ab) x - sqrt(1-ab) v), x_0 clipped to [-1, 1] and eps re-derived from the clipped x_0
// (as guided-diffusion does), then the DDIM or strided-DDPM update to the next timestep.
//
// Batch invariance. A sample's pixels must not depend on what it was batched with, bit for bit.
// On the CPU several ATen ops break that when the batch changes (measured with LibTorch 1.13.1,
// OpenBLAS 0.3.21, oneDNN 2.6): conv2d switches between the native and the oneDNN kernel on the
// batch size; one [R*M, in] GEMM partitions its rows differently for different R; GroupNorm on a
// strided (channels-last-looking) input picks its algorithm by the batch size; and the
// vectorised elementwise kernels compute the tail of each parallel chunk with scalar code (a
// different exp / erf), the chunks being cut from the whole tensor. The forward therefore uses
// only ops whose per-row results do not depend on R:
//   * convolutions call oneDNN directly (at::mkldnn_convolution), whose output for an image does
//     not depend on the minibatch (no reduction across images);
//   * linear layers on [R, M, in] are one GEMM per row (bmm against the broadcast weight);
//   * attention is bmm (one GEMM per matrix), softmax / LayerNorm / GroupNorm reduce within a row
//     or group (image activations are kept contiguous NCHW), adds and products are exact;
//   * SiLU and GELU are applied row by row (each call sees one contiguous row of the same size);
//   * the time MLP and each block's time projection are tabulated for every timestep at load
//     time and gathered per row; each caption's text states, cross-attention keys/values and
//     res-block text projections are computed alone at StartSample;
//   * the sampler update runs on each sample's own tensors.
// CreateDiffusionModel checks this on the actual machine (a row alone against the same row in
// batches of 3 and 5, at different timesteps, with different captions): should it ever fail,
// the model falls back to convolving row by row, and then to running the U-Net once per row,
// which is invariant by construction. On other devices the batch is padded to a fixed
// 2 * max_samples rows, so every forward runs the same kernels on the same shapes (rows are then
// independent as long as a kernel treats all rows alike, which the same check verifies). The
// environment variable TANDEM_DIFFUSION_FORWARD=batched|per_row_conv|per_row forces a mode
// (benchmarks, tests).
#include "models/diffusion/diffusion_model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "models/torch/torch_util.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "models/diffusion/diffusion_config.h"
#include "models/diffusion/diffusion_schedule.h"
#include "models/diffusion/diffusion_weights.h"
#include "models/image_model.h"

namespace tandem {
namespace {

using torch_util::FromFloatTensor;
using torch_util::Numel;
using torch_util::RunTorch;

// The architecture (weights, text encoder, U-Net topology): models/diffusion_weights.h.
using diffusion_net::AttnW;
using diffusion_net::BuildWeights;
using diffusion_net::CheckedConfig;
using diffusion_net::CheckWeights;
using diffusion_net::ConvW;
using diffusion_net::ForEachAttn;
using diffusion_net::ForEachRes;
using diffusion_net::Init;
using diffusion_net::kBosId;
using diffusion_net::kNormEps;
using diffusion_net::LinearW;
using diffusion_net::LoadWeights;
using diffusion_net::ResW;
using diffusion_net::Sinusoid;
using diffusion_net::Weights;
using diffusion_net::WalkUNet;

constexpr float kMaxGuidance = 1000.0f;
// Self-attention scores are computed for this many bytes of [rows*heads, N, N] at most at once.
constexpr int64_t kScoreBytes = int64_t{64} << 20;

}  // namespace

namespace diffusion_model {

// ---------------------------------------------------------------------------------------------
// Text contexts: a caption's key / value projections for every attention block.

struct TextContext {
  std::vector<torch::Tensor> k;  // per attention block [heads, hd, L] (keys transposed)
  std::vector<torch::Tensor> v;  // per attention block [heads, L, hd]
  torch::Tensor mask;            // [1, 1, 1, L] additive: 0 for caption positions, -inf for padding
  std::vector<torch::Tensor> shift;  // per res block [1, out]: text(pooled); empty without pooled_text
};

// The rows of one forward: their text, stacked.
struct BatchContext {
  std::vector<torch::Tensor> k;      // per attention block [R*heads, hd, L]
  std::vector<torch::Tensor> v;      // per attention block [R*heads, L, hd]
  torch::Tensor mask;                // [R, 1, 1, L]
  std::vector<torch::Tensor> shift;  // per res block [R, out]; empty without pooled_text
};

// ---------------------------------------------------------------------------------------------
// Sampler arithmetic (float64, one sample's own tensors).

absl::StatusOr<UpdateResult> SamplerUpdate(const std::vector<double>& ab, bool v_prediction,
                                           DiffusionSampler sampler, double eta, int t, int t_prev,
                                           const torch::Tensor& x, const torch::Tensor& out,
                                           at::Generator& gen) {
  const int T = static_cast<int>(ab.size());
  if (t < 0 || t >= T || t_prev < -1 || t_prev >= t) {
    return absl::InvalidArgumentError(absl::StrCat("sampler update: need 0 <= t < ", T,
                                                   " and -1 <= t_prev < t, got t ", t, ", t_prev ",
                                                   t_prev));
  }
  if (!x.sizes().equals(out.sizes())) {
    return absl::InvalidArgumentError("sampler update: x_t and the model output differ in shape");
  }
  const double ab_t = ab[t];
  const double ab_prev = t_prev >= 0 ? ab[t_prev] : 1.0;
  const double s_t = std::sqrt(ab_t), r_t = std::sqrt(1.0 - ab_t);
  const torch::Tensor xd = x.to(torch::kFloat64);                                 // [C, H, W]
  const torch::Tensor od = out.to(torch::kFloat64);                               // [C, H, W]
  torch::Tensor x0 = v_prediction ? xd * s_t - od * r_t : (xd - od * r_t) / s_t;  // [C, H, W]
  x0.clamp_(-1.0, 1.0);
  const torch::Tensor eps = (xd - x0 * s_t) / r_t;  // [C, H, W], consistent with the clipped x0
  auto noise = [&]() {
    return at::randn(x.sizes(), gen, torch::TensorOptions().dtype(torch::kFloat32))
        .to(x.device(), torch::kFloat64);  // [C, H, W]
  };
  torch::Tensor x_prev;  // [C, H, W] float64
  if (sampler == DiffusionSampler::kDdim) {
    const double sigma = t_prev >= 0 ? eta * std::sqrt((1.0 - ab_prev) / (1.0 - ab_t)) *
                                           std::sqrt(1.0 - ab_t / ab_prev)
                                     : 0.0;
    const double dir = std::sqrt(std::max(0.0, 1.0 - ab_prev - sigma * sigma));
    x_prev = x0 * std::sqrt(ab_prev) + eps * dir;
    if (sigma > 0) x_prev += noise() * sigma;
  } else {
    // Posterior q(x_prev | x_t, x_0) between the sample's consecutive timesteps.
    const double alpha = ab_t / ab_prev, beta = 1.0 - alpha;
    const double c0 = std::sqrt(ab_prev) * beta / (1.0 - ab_t);
    const double ct = std::sqrt(alpha) * (1.0 - ab_prev) / (1.0 - ab_t);
    x_prev = x0 * c0 + xd * ct;
    if (t_prev >= 0) {
      const double variance = beta * (1.0 - ab_prev) / (1.0 - ab_t);
      if (variance > 0) x_prev += noise() * std::sqrt(variance);
    }
  }
  return UpdateResult{x_prev.to(torch::kFloat32), x0.to(torch::kFloat32)};
}

}  // namespace diffusion_model

namespace {

using diffusion_model::BatchContext;
using diffusion_model::ForwardMode;
using diffusion_model::Sample;
using diffusion_model::SamplerUpdate;
using diffusion_model::TextContext;
using diffusion_model::UpdateResult;

}  // namespace

// ---------------------------------------------------------------------------------------------
// The model.

DiffusionModel::DiffusionModel(DiffusionConfig config, torch::Device device, int max_samples,
                               int64_t parameter_count)
    : config_(std::move(config)),
      device_(device),
      device_string_(device.str()),
      max_samples_(max_samples),
      parameter_count_(parameter_count),
      alpha_bar_(CosineAlphaBar(config_.diffusion_steps)),
      samples_(max_samples) {}

void DiffusionModel::Load(Weights weights, const char* forced_mode) {
  w_ = std::move(weights);
  const bool cpu = device_.is_cpu();
  row_elementwise_ = cpu;
  fixed_rows_ = cpu ? 0 : 2 * int64_t{max_samples_};
  // Transposed copies for the per-row GEMMs; the query projections absorb 1/sqrt(head_dim).
  ForEachAttn(w_, [&](AttnW& a) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(a.c / a.heads));
    a.qkv.w = a.qkv.w.clone();
    a.qkv.w.narrow(0, 0, a.c).mul_(scale);  // q rows of [3c, c]
    a.q.w = a.q.w * scale;                  // [c, c]
    for (LinearW* l : {&a.qkv, &a.self_out, &a.q, &a.cross_out, &a.fc1, &a.fc2, &a.proj}) {
      l->wt = l->w.t().contiguous();  // [in, out]
    }
  });
  // Time tables: temb(t) for every timestep once, then every block's projection of it.
  const int64_t T = config_.diffusion_steps;
  torch::Tensor temb = Sinusoid(T, config_.unet_widths[0]).to(device_);  // [T, W0]
  temb = at::silu(at::linear(temb, w_.time1.w, w_.time1.b));             // [T, E]
  temb = at::silu(at::linear(temb, w_.time2.w, w_.time2.b));             // [T, E], SiLU'd
  ForEachRes(w_, [&](ResW& r) {
    r.time_table = at::linear(temb, r.time.w, r.time.b).contiguous();  // [T, out]
  });
  empty_caption_ = EncodeCaption({});
  if (forced_mode != nullptr) {
    const std::string m = forced_mode;
    mode_ = m == "per_row"        ? ForwardMode::kPerRow
            : m == "per_row_conv" ? ForwardMode::kPerRowConv
                                  : ForwardMode::kBatched;
    return;
  }
  // Settle the cheapest mode that is batch-invariant here.
  for (ForwardMode m : {ForwardMode::kBatched, ForwardMode::kPerRowConv}) {
    if (m == ForwardMode::kPerRowConv && !cpu) continue;
    mode_ = m;
    if (Invariant()) return;
  }
  mode_ = ForwardMode::kPerRow;
}

bool DiffusionModel::Invariant() const {
  const int64_t c = config_.channels, s = config_.image_size, T = config_.diffusion_steps;
  // Up to 5 rows (no more than a padded forward holds), different timesteps and captions.
  const int64_t n = fixed_rows_ > 0 ? std::min<int64_t>(5, fixed_rows_) : 5;
  at::Generator gen = at::detail::createCPUGenerator(12345);
  const torch::Tensor x =
      at::randn({n, c, s, s}, gen, torch::TensorOptions()).to(device_);  // [n, C, H, W]
  const std::shared_ptr<const TextContext> a = EncodeCaption({0, 1}), b = EncodeCaption({1});
  std::vector<int64_t> t;
  std::vector<const TextContext*> ctx;
  for (int64_t i = 0; i < n; ++i) {
    t.push_back((T - 1) * (n - i) / n);
    ctx.push_back(i % 3 == 0 ? a.get() : i % 3 == 1 ? empty_caption_.get() : b.get());
  }
  const int64_t k = std::min<int64_t>(3, n);     // a middle batch size
  const torch::Tensor all = Forward(x, t, ctx);  // [n, C, H, W]
  const torch::Tensor some =
      Forward(x.narrow(0, 0, k), {t.begin(), t.begin() + k}, {ctx.begin(), ctx.begin() + k});
  const torch::Tensor alone = Forward(x.narrow(0, k - 1, 1), {t[k - 1]}, {ctx[k - 1]});
  return at::equal(alone[0], some[k - 1]) && at::equal(alone[0], all[k - 1]) &&
         at::equal(some[0], all[0]);
}

absl::Status DiffusionModel::CheckSample(int sample) const {
  if (sample < 0 || sample >= max_samples_ || !samples_[sample].active) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sample ", sample, " is not a started sample (max_samples ", max_samples_, ")"));
  }
  return absl::OkStatus();
}

absl::Status DiffusionModel::CheckTokens(absl::Span<const int32_t> ids, const char* what) const {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": token ", ids[i], " at index ", i,
                                                     " is outside the vocabulary [0, ",
                                                     config_.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

// ------------------------------------------------------------------------------ text encoder

torch::Tensor DiffusionModel::EncodeText(const torch::Tensor& ids,
                                         const torch::Tensor& mask) const {
  return diffusion_net::EncodeText(w_, config_, ids, mask);  // [B, L, D]
}

std::shared_ptr<const TextContext> DiffusionModel::EncodeCaption(
    absl::Span<const int32_t> caption) const {
  const int64_t L = config_.text_seq_len;
  torch::Tensor ids = torch::zeros({1, L}, torch::kInt64);  // [1, L]: BOS, ids, 0 padding
  torch::Tensor mask = torch::full({1, 1, 1, L}, -std::numeric_limits<float>::infinity());
  int64_t* p = ids.data_ptr<int64_t>();
  const int64_t n = std::min<int64_t>(L, 1 + static_cast<int64_t>(caption.size()));
  p[0] = kBosId;
  for (int64_t i = 1; i < n; ++i) p[i] = caption[i - 1];
  mask.narrow(3, 0, n).zero_();  // [1, 1, 1, L]
  auto ctx = std::make_shared<TextContext>();
  ctx->mask = mask.to(device_);
  const torch::Tensor states = EncodeText(ids.to(device_), ctx->mask)[0];  // [L, D]
  ctx->k.resize(w_.attention_blocks);
  ctx->v.resize(w_.attention_blocks);
  if (config_.pooled_text) {
    const torch::Tensor pooled = diffusion_net::PoolText(states.unsqueeze(0), ctx->mask);  // [1, D]
    ctx->shift.resize(w_.res_blocks);
    ForEachRes(w_, [&](const ResW& r) {
      ctx->shift[r.index] = at::linear(pooled, r.text.w, r.text.b);  // [1, out]
    });
  }
  ForEachAttn(w_, [&](const AttnW& a) {
    const int64_t heads = a.heads, hd = a.c / heads;
    const torch::Tensor kv = at::linear(states, a.kv.w);  // [L, 2c]
    ctx->k[a.index] =
        kv.narrow(1, 0, a.c).view({L, heads, hd}).permute({1, 2, 0}).contiguous();  // [h, hd, L]
    ctx->v[a.index] =
        kv.narrow(1, a.c, a.c).view({L, heads, hd}).permute({1, 0, 2}).contiguous();  // [h, L, hd]
  });
  return ctx;
}

BatchContext DiffusionModel::Stack(const std::vector<const TextContext*>& rows) const {
  BatchContext b;
  std::vector<torch::Tensor> parts(rows.size());
  for (int i = 0; i < w_.attention_blocks; ++i) {
    for (size_t r = 0; r < rows.size(); ++r) parts[r] = rows[r]->k[i];
    b.k.push_back(at::cat(parts, 0));  // [R*heads, hd, L]
    for (size_t r = 0; r < rows.size(); ++r) parts[r] = rows[r]->v[i];
    b.v.push_back(at::cat(parts, 0));  // [R*heads, L, hd]
  }
  for (size_t r = 0; r < rows.size(); ++r) parts[r] = rows[r]->mask;
  b.mask = at::cat(parts, 0);  // [R, 1, 1, L]
  const size_t shifts = rows.empty() ? 0 : rows[0]->shift.size();
  for (size_t i = 0; i < shifts; ++i) {
    for (size_t r = 0; r < rows.size(); ++r) parts[r] = rows[r]->shift[i];
    b.shift.push_back(at::cat(parts, 0));  // [R, out]
  }
  return b;
}

// ------------------------------------------------------------------------------------ U-Net

torch::Tensor DiffusionModel::Conv(const ConvW& c, const torch::Tensor& x) const {
  // x: [R, in, H, W] -> [R, out, H', W'].
  if (device_.is_cpu()) {
    if (mode_ == ForwardMode::kBatched && at::hasMKLDNN()) {
      return at::mkldnn_convolution(x.contiguous(), c.w, c.b, {c.padding, c.padding},
                                    {c.stride, c.stride}, {1, 1}, 1);
    }
    if (mode_ != ForwardMode::kPerRow && x.size(0) > 1) {
      std::vector<torch::Tensor> rows;
      for (int64_t r = 0; r < x.size(0); ++r) {
        rows.push_back(at::conv2d(x.narrow(0, r, 1), c.w, c.b, c.stride, c.padding));
      }
      return at::cat(rows, 0);
    }
  }
  return at::conv2d(x, c.w, c.b, c.stride, c.padding);
}

torch::Tensor DiffusionModel::RowLinear(const LinearW& l, const torch::Tensor& x) const {
  // x: [R, M, in] -> [R, M, out]; on the CPU one GEMM per row.
  torch::Tensor y;
  if (fixed_rows_ > 0) {
    y = at::matmul(x, l.wt);  // fixed shapes: one GEMM
  } else {
    y = at::bmm(x, l.wt.expand({x.size(0), l.wt.size(0), l.wt.size(1)}));  // [R, M, out]
  }
  if (l.b.defined()) y.add_(l.b);
  return y;
}

void DiffusionModel::Activate(torch::Tensor& x, bool gelu) const {
  // x: [R, ...] in place.
  if (!row_elementwise_) {
    gelu ? at::gelu_(x) : at::silu_(x);
    return;
  }
  for (int64_t r = 0; r < x.size(0); ++r) {
    torch::Tensor row = x.select(0, r);  // contiguous [...]
    gelu ? at::gelu_(row) : at::silu_(row);
  }
}

torch::Tensor DiffusionModel::Res(const ResW& r, const torch::Tensor& x, const torch::Tensor& t,
                                  const BatchContext& ctx) const {
  // x: [R, in, H, W], t: [R] -> [R, out, H, W].
  const int64_t g = config_.groups, rows = x.size(0);
  torch::Tensor h = at::group_norm(x, g, r.norm1.w, r.norm1.b, kNormEps);  // [R, in, H, W]
  Activate(h, false);
  h = Conv(r.conv1, h);  // [R, out, H, W]
  torch::Tensor shift = r.time_table.index_select(0, t);  // [R, out]
  if (!ctx.shift.empty()) shift.add_(ctx.shift[r.index]);  // each row's caption, computed alone
  h.add_(shift.view({rows, r.out, 1, 1}));
  h = at::group_norm(h, g, r.norm2.w, r.norm2.b, kNormEps);  // [R, out, H, W]
  Activate(h, false);
  h = Conv(r.conv2, h);  // [R, out, H, W]
  return r.skip.w.defined() ? Conv(r.skip, x).add_(h) : h.add_(x);
}

torch::Tensor DiffusionModel::Attn(const AttnW& a, const torch::Tensor& x,
                                   const BatchContext& ctx) const {
  // x: [R, c, H, W] -> [R, c, H, W].
  const int64_t rows = x.size(0), c = a.c, heads = a.heads, hd = c / heads;
  const int64_t H = x.size(2), W = x.size(3), n = H * W;
  torch::Tensor t = at::group_norm(x, config_.groups, a.norm.w, a.norm.b, kNormEps)
                        .view({rows, c, n})
                        .transpose(1, 2)
                        .contiguous();  // [R, N, c]
  // Self-attention over the H*W positions, in row chunks that bound the score memory.
  {
    const torch::Tensor qkv = RowLinear(a.qkv, at::layer_norm(t, {c}, a.ln1.w, a.ln1.b, kNormEps))
                                  .view({rows, n, 3, heads, hd});  // [R, N, 3, heads, hd]
    const torch::Tensor q =
        qkv.select(2, 0).permute({0, 2, 1, 3}).reshape({rows * heads, n, hd});  // [R*h, N, hd]
    const torch::Tensor kt =
        qkv.select(2, 1).permute({0, 2, 3, 1}).reshape({rows * heads, hd, n});  // [R*h, hd, N]
    const torch::Tensor v =
        qkv.select(2, 2).permute({0, 2, 1, 3}).reshape({rows * heads, n, hd});  // [R*h, N, hd]
    const int64_t chunk =
        std::max<int64_t>(1, kScoreBytes / (heads * n * n * int64_t{sizeof(float)}));
    std::vector<torch::Tensor> outs;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t m = std::min(chunk, rows - r0) * heads;
      const torch::Tensor p =
          at::softmax(at::bmm(q.narrow(0, r0 * heads, m), kt.narrow(0, r0 * heads, m)),
                      -1);                                     // [m, N, N]
      outs.push_back(at::bmm(p, v.narrow(0, r0 * heads, m)));  // [m, N, hd]
    }
    const torch::Tensor o = (outs.size() == 1 ? outs[0] : at::cat(outs, 0))
                                .view({rows, heads, n, hd})
                                .permute({0, 2, 1, 3})
                                .reshape({rows, n, c});  // [R, N, c]
    t.add_(RowLinear(a.self_out, o));
  }
  // Cross-attention: queries from the image, keys / values from each row's text.
  {
    const torch::Tensor q = RowLinear(a.q, at::layer_norm(t, {c}, a.ln2.w, a.ln2.b, kNormEps))
                                .view({rows, n, heads, hd})
                                .permute({0, 2, 1, 3})
                                .reshape({rows * heads, n, hd});  // [R*h, N, hd]
    const int64_t L = ctx.mask.size(3);
    torch::Tensor scores = at::bmm(q, ctx.k[a.index]).view({rows, heads, n, L});  // [R, h, N, L]
    scores.add_(ctx.mask);
    const torch::Tensor o = at::bmm(at::softmax(scores, -1).view({rows * heads, n, L}),
                                    ctx.v[a.index])  // [R*h, N, hd]
                                .view({rows, heads, n, hd})
                                .permute({0, 2, 1, 3})
                                .reshape({rows, n, c});  // [R, N, c]
    t.add_(RowLinear(a.cross_out, o));
  }
  // MLP.
  {
    torch::Tensor h = RowLinear(a.fc1, at::layer_norm(t, {c}, a.ln3.w, a.ln3.b, kNormEps));
    Activate(h, true);            // [R, N, 2c]
    t.add_(RowLinear(a.fc2, h));  // [R, N, c]
  }
  // Contiguous NCHW: a strided view would look channels-last to GroupNorm, whose channels-last
  // kernel picks its algorithm by the batch size.
  return RowLinear(a.proj, t).transpose(1, 2).contiguous().view({rows, c, H, W}).add_(x);
}

torch::Tensor DiffusionModel::UNet(const torch::Tensor& x, const torch::Tensor& t,
                                   const BatchContext& ctx) const {
  // x: [R, C, H, W], t: [R] -> [R, C, H, W].
  return WalkUNet(config_, w_, *this, x, t, ctx);
}

torch::Tensor DiffusionModel::Forward(const torch::Tensor& x, const std::vector<int64_t>& t,
                                      const std::vector<const TextContext*>& rows) const {
  // x: [R, C, H, W] -> [R, C, H, W].
  const int64_t r = x.size(0);
  auto timesteps = [&](const std::vector<int64_t>& v) {
    return torch::tensor(v, torch::kInt64).to(device_);  // [n]
  };
  if (mode_ == ForwardMode::kPerRow) {
    std::vector<torch::Tensor> outs;
    for (int64_t i = 0; i < r; ++i) {
      outs.push_back(UNet(x.narrow(0, i, 1), timesteps({t[i]}), Stack({rows[i]})));
    }
    return at::cat(outs, 0);
  }
  if (fixed_rows_ > r) {
    // Fixed shapes: pad with zero images at timestep 0 and the empty caption.
    const int64_t pad = fixed_rows_ - r;
    const torch::Tensor padded = at::cat(
        {x, torch::zeros({pad, x.size(1), x.size(2), x.size(3)}, x.options())});  // [F, C, H, W]
    std::vector<int64_t> tp = t;
    tp.resize(fixed_rows_, 0);
    std::vector<const TextContext*> rp = rows;
    rp.resize(fixed_rows_, empty_caption_.get());
    return UNet(padded, timesteps(tp), Stack(rp)).narrow(0, 0, r);
  }
  return UNet(x, timesteps(t), Stack(rows));
}

// ------------------------------------------------------------------------------- public API

absl::StatusOr<int> DiffusionModel::StartSample(const ImageSampleSpec& spec) {
  const int T = config_.diffusion_steps;
  if (spec.steps < 1 || spec.steps > T) {
    return absl::InvalidArgumentError(
        absl::StrCat("steps (", spec.steps, ") must be in [1, diffusion_steps ", T, "]"));
  }
  if (!(std::isfinite(spec.guidance) && spec.guidance >= 1.0f && spec.guidance <= kMaxGuidance)) {
    return absl::InvalidArgumentError(
        absl::StrCat("guidance (", spec.guidance, ") must be in [1, ", kMaxGuidance, "]"));
  }
  if (spec.sampler != DiffusionSampler::kDdim && spec.sampler != DiffusionSampler::kDdpm) {
    return absl::InvalidArgumentError("unknown sampler");
  }
  if (!(std::isfinite(spec.eta) && spec.eta >= 0.0f && spec.eta <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("eta (", spec.eta, ") must be in [0, 1]"));
  }
  if (absl::Status s = CheckTokens(spec.caption, "caption"); !s.ok()) return s;
  if (absl::Status s = CheckTokens(spec.negative_caption, "negative caption"); !s.ok()) return s;
  if (active_ >= max_samples_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("all ", max_samples_, " sample slots are in use"));
  }
  int slot = 0;
  while (samples_[slot].active) ++slot;
  return RunTorch("StartSample", [&]() -> absl::StatusOr<int> {
    Sample s;
    s.spec = spec;
    s.timesteps = SamplingTimesteps(T, spec.steps);
    s.gen = at::detail::createCPUGenerator(spec.seed);
    const int64_t c = config_.channels, size = config_.image_size;
    s.x = at::randn({c, size, size}, s.gen, torch::TensorOptions().dtype(torch::kFloat32))
              .to(device_);  // [C, H, W] x_T
    s.cond = EncodeCaption(spec.caption);
    if (spec.guidance != 1.0f) {
      s.uncond =
          spec.negative_caption.empty() ? empty_caption_ : EncodeCaption(spec.negative_caption);
    }
    s.active = true;
    samples_[slot] = std::move(s);
    ++active_;
    return slot;
  });
}

absl::Status DiffusionModel::Step(absl::Span<const int> samples) {
  if (samples.empty()) return absl::OkStatus();
  std::vector<bool> seen(max_samples_, false);
  for (int sample : samples) {
    if (absl::Status s = CheckSample(sample); !s.ok()) return s;
    if (seen[sample]) {
      return absl::InvalidArgumentError(absl::StrCat("Step: sample ", sample, " twice"));
    }
    seen[sample] = true;
    const Sample& s = samples_[sample];
    if (s.done >= static_cast<int>(s.timesteps.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("Step: sample ", sample, " has taken all its ", s.done, " steps"));
    }
  }
  return RunTorch("Step", [&]() -> absl::Status {
    // Rows: per sample its cond row, then its uncond row when guided.
    std::vector<torch::Tensor> xs;
    std::vector<int64_t> ts;
    std::vector<const TextContext*> texts;
    std::vector<int64_t> first_row;
    for (int sample : samples) {
      const Sample& s = samples_[sample];
      first_row.push_back(static_cast<int64_t>(xs.size()));
      const int64_t t = s.timesteps[s.done];
      xs.push_back(s.x);
      ts.push_back(t);
      texts.push_back(s.cond.get());
      if (s.uncond) {
        xs.push_back(s.x);
        ts.push_back(t);
        texts.push_back(s.uncond.get());
      }
    }
    const torch::Tensor out = Forward(at::stack(xs), ts, texts);  // [R, C, H, W]
    // Updates are computed for every sample before any state changes.
    std::vector<UpdateResult> results;
    for (size_t i = 0; i < samples.size(); ++i) {
      Sample& s = samples_[samples[i]];
      torch::Tensor o = out[first_row[i]];  // [C, H, W]
      if (s.uncond) {
        const torch::Tensor u = out[first_row[i] + 1];  // [C, H, W]
        o = (o - u).mul_(static_cast<double>(s.spec.guidance)).add_(u);
      }
      const int t = s.timesteps[s.done];
      const int t_prev =
          s.done + 1 < static_cast<int>(s.timesteps.size()) ? s.timesteps[s.done + 1] : -1;
      absl::StatusOr<UpdateResult> r =
          SamplerUpdate(alpha_bar_, config_.prediction == "v", s.spec.sampler, s.spec.eta, t,
                        t_prev, s.x, o, s.gen);
      if (!r.ok()) return r.status();
      results.push_back(*std::move(r));
    }
    for (size_t i = 0; i < samples.size(); ++i) {
      Sample& s = samples_[samples[i]];
      s.x = std::move(results[i].x_prev);
      s.x0 = std::move(results[i].x0);
      ++s.done;
    }
    return absl::OkStatus();
  });
}

absl::Status DiffusionModel::Pixels(int sample, std::vector<uint8_t>* pixels) {
  if (absl::Status s = CheckSample(sample); !s.ok()) return s;
  const Sample& s = samples_[sample];
  const bool finished = s.done >= static_cast<int>(s.timesteps.size());
  const torch::Tensor& image = finished || !s.x0.defined() ? s.x : s.x0;  // [C, H, W]
  return RunTorch("Pixels", [&]() -> absl::Status {
    const torch::Tensor p = at::round((image.clamp(-1.0, 1.0) + 1.0) * 127.5)
                                .to(torch::kCPU, torch::kUInt8)
                                .permute({1, 2, 0})
                                .contiguous();  // [H, W, C]
    const uint8_t* data = p.data_ptr<uint8_t>();
    pixels->assign(data, data + p.numel());
    return absl::OkStatus();
  });
}

absl::Status DiffusionModel::Latent(int sample, std::vector<float>* x,
                                    std::vector<float>* x0) const {
  if (absl::Status s = CheckSample(sample); !s.ok()) return s;
  const Sample& s = samples_[sample];
  return RunTorch("Latent", [&]() -> absl::Status {
    auto copy = [](const torch::Tensor& t, std::vector<float>* out) {
      out->clear();
      if (!t.defined()) return;
      const torch::Tensor c = t.to(torch::kCPU).contiguous();  // [C, H, W]
      out->assign(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
    };
    copy(s.x, x);
    copy(s.x0, x0);
    return absl::OkStatus();
  });
}

absl::StatusOr<torch::Tensor> DiffusionModel::RawOutput(
    const torch::Tensor& x, const std::vector<int64_t>& t,
    const std::vector<std::vector<int32_t>>& captions) const {
  const int64_t rows = static_cast<int64_t>(t.size());
  const std::vector<int64_t> shape = {rows, config_.channels, config_.image_size,
                                      config_.image_size};
  if (rows < 1 || static_cast<int64_t>(captions.size()) != rows || x.sizes().vec() != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RawOutput: need R >= 1 timesteps, R captions and x of shape [R, ", config_.channels, ", ",
        config_.image_size, ", ", config_.image_size, "]; got ", t.size(), ", ", captions.size(),
        " and ", torch_util::ShapeString(x.sizes().vec())));
  }
  for (int64_t i = 0; i < rows; ++i) {
    if (t[i] < 0 || t[i] >= config_.diffusion_steps) {
      return absl::InvalidArgumentError(absl::StrCat("RawOutput: timestep ", t[i], " outside [0, ",
                                                     config_.diffusion_steps, ")"));
    }
    if (absl::Status s = CheckTokens(captions[i], "RawOutput caption"); !s.ok()) return s;
  }
  return RunTorch("RawOutput", [&]() -> absl::StatusOr<torch::Tensor> {
    std::vector<std::shared_ptr<const TextContext>> texts;
    std::vector<const TextContext*> contexts;
    for (const std::vector<int32_t>& caption : captions) {
      texts.push_back(EncodeCaption(caption));
      contexts.push_back(texts.back().get());
    }
    return Forward(x.to(device_, torch::kFloat32), t, contexts);  // [R, C, H, W]
  });
}

int DiffusionModel::StepsDone(int sample) const {
  return CheckSample(sample).ok() ? samples_[sample].done : 0;
}

int DiffusionModel::TotalSteps(int sample) const {
  return CheckSample(sample).ok() ? static_cast<int>(samples_[sample].timesteps.size()) : 0;
}

void DiffusionModel::ReleaseSample(int sample) {
  if (!CheckSample(sample).ok()) return;
  samples_[sample] = Sample();
  --active_;
}

absl::StatusOr<std::unique_ptr<DiffusionModel>> DiffusionModel::Create(
    const DiffusionConfig& config, const TensorMap& weights, const ImageModelOptions& options) {
  absl::StatusOr<DiffusionConfig> checked = CheckedConfig(config);
  if (!checked.ok()) return checked.status();
  const DiffusionConfig& c = *checked;
  if (options.max_samples < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_samples must be at least 1, got ", options.max_samples));
  }
  if (absl::Status s = CheckWeights(c, weights); !s.ok()) return s;
  return torch_util::RunOnDevice(
      "CreateDiffusionModel", options.device,
      [&](const torch::Device& device) -> absl::StatusOr<std::unique_ptr<DiffusionModel>> {
        int64_t parameters = 0;
        absl::StatusOr<Weights> w =
            LoadWeights(c, weights, device,
                        [&](const std::string&, torch::Tensor& t) { parameters += t.numel(); });
        if (!w.ok()) return w.status();
        std::unique_ptr<DiffusionModel> model(
            new DiffusionModel(c, device, options.max_samples, parameters));
        const char* forced = std::getenv("TANDEM_DIFFUSION_FORWARD");
        model->Load(*std::move(w), forced != nullptr && *forced != '\0' ? forced : nullptr);
        return model;
      });
}

absl::StatusOr<std::unique_ptr<ImageModel>> CreateDiffusionModel(const DiffusionConfig& config,
                                                                 const TensorMap& weights,
                                                                 const ImageModelOptions& options) {
  absl::StatusOr<std::unique_ptr<DiffusionModel>> model =
      DiffusionModel::Create(config, weights, options);
  if (!model.ok()) return model.status();
  return std::unique_ptr<ImageModel>(*std::move(model));
}

absl::StatusOr<TensorMap> RandomDiffusionWeights(const DiffusionConfig& config, uint64_t seed) {
  absl::StatusOr<DiffusionConfig> checked = CheckedConfig(config);
  if (!checked.ok()) return checked.status();
  return RunTorch("RandomDiffusionWeights", [&]() -> absl::StatusOr<TensorMap> {
    // A private generator: the process-wide RNG is neither read nor advanced.
    at::Generator gen = at::detail::createCPUGenerator(seed);
    TensorMap out;
    BuildWeights(*checked, [&](const std::string& name, std::vector<int64_t> shape, Init init) {
      torch::Tensor t;  // [shape]
      switch (init) {
        case Init::kOne:
          t = torch::ones(shape);
          break;
        case Init::kZero:
          t = torch::zeros(shape);
          break;
        case Init::kEmbedding:
          t = at::normal(0.0, 0.02, shape, gen);
          break;
        case Init::kFanIn: {
          // PyTorch's default for Linear / Conv2d weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
          const int64_t fan_in = Numel(shape) / shape[0];
          const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
          t = torch::empty(shape).uniform_(-bound, bound, gen);
          break;
        }
      }
      out.emplace(name, FromFloatTensor(t));
      return torch::Tensor();
    });
    return out;
  });
}

}  // namespace tandem

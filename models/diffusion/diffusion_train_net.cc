#include "models/diffusion/diffusion_train_net.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "models/diffusion/diffusion_weights.h"
#include "models/torch/torch_util.h"

namespace tandem {
namespace {

using diffusion_net::AttnW;
using diffusion_net::ConvW;
using diffusion_net::kBosId;
using diffusion_net::kNormEps;
using diffusion_net::ResW;
using diffusion_net::Weights;

// The rows' captions, as the U-Net's attention blocks read them.
struct TextBatch {
  torch::Tensor states;  // [B, L, D] text encoder output
  torch::Tensor mask;    // [B, 1, 1, L] additive key mask: 0 caption, -inf padding
  torch::Tensor pooled;  // [B, D] PoolText(states, mask); undefined without pooled_text
};

// WalkUNet's blocks in plain autograd ops. The serving kernels (diffusion.cc) compute the same
// math; where they fold or tabulate (1/sqrt(head_dim) folded into the query weights, the time
// projections tabulated per timestep) this computes the unfolded form.
struct TrainBlocks {
  const DiffusionConfig& c;

  torch::Tensor Conv(const ConvW& w, const torch::Tensor& x) const {
    // x: [B, in, H, W] -> [B, out, H / stride, W / stride].
    return at::conv2d(x, w.w, w.b, w.stride, w.padding);
  }

  torch::Tensor Silu(const torch::Tensor& x) const { return at::silu(x); }

  // x: [B, in, H, W], temb: [B, E] (SiLU'd time embedding) -> [B, out, H, W].
  torch::Tensor Res(const ResW& r, const torch::Tensor& x, const torch::Tensor& temb,
                    const TextBatch& text) const {
    torch_util::LayerBoundary(x);
    torch::Tensor h = Conv(r.conv1, Silu(at::group_norm(x, c.groups, r.norm1.w, r.norm1.b,
                                                        kNormEps)));  // [B, out, H, W]
    torch::Tensor shift = at::linear(temb, r.time.w, r.time.b);      // [B, out]
    if (r.text.w.defined()) shift = shift + at::linear(text.pooled, r.text.w, r.text.b);
    h = h + shift.view({x.size(0), r.out, 1, 1});  // [B, out, H, W]
    h = Conv(r.conv2, Silu(at::group_norm(h, c.groups, r.norm2.w, r.norm2.b,
                                          kNormEps)));        // [B, out, H, W]
    return r.skip.w.defined() ? Conv(r.skip, x) + h : x + h;  // [B, out, H, W]
  }

  // x: [B, c, H, W] -> [B, c, H, W].
  torch::Tensor Attn(const AttnW& a, const torch::Tensor& x, const TextBatch& text) const {
    torch_util::LayerBoundary(x);
    const int64_t b = x.size(0), ch = a.c, heads = a.heads, hd = ch / heads;
    const int64_t H = x.size(2), W = x.size(3), n = H * W, L = text.states.size(1);
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    torch::Tensor t = at::group_norm(x, c.groups, a.norm.w, a.norm.b, kNormEps)
                          .view({b, ch, n})
                          .transpose(1, 2);  // [B, N, c]
    // Self-attention over the H*W positions.
    {
      const torch::Tensor qkv =
          at::linear(at::layer_norm(t, {ch}, a.ln1.w, a.ln1.b, kNormEps), a.qkv.w)
              .view({b, n, 3, heads, hd})
              .permute({2, 0, 3, 1, 4});       // [3, B, h, N, hd]
      const torch::Tensor q = qkv[0] * scale;  // [B, h, N, hd]
      const torch::Tensor p =
          at::softmax(at::matmul(q, qkv[1].transpose(-1, -2)), -1);  // [B, h, N, N]
      const torch::Tensor o =
          at::matmul(p, qkv[2]).permute({0, 2, 1, 3}).reshape({b, n, ch});  // [B, N, c]
      t = t + at::linear(o, a.self_out.w, a.self_out.b);                    // [B, N, c]
    }
    // Cross-attention: queries from the image, keys / values from the row's caption states.
    {
      const torch::Tensor q = at::linear(at::layer_norm(t, {ch}, a.ln2.w, a.ln2.b, kNormEps), a.q.w)
                                  .view({b, n, heads, hd})
                                  .transpose(1, 2) *
                              scale;                             // [B, h, N, hd]
      const torch::Tensor kv = at::linear(text.states, a.kv.w);  // [B, L, 2c]
      const torch::Tensor k =
          kv.narrow(2, 0, ch).view({b, L, heads, hd}).permute({0, 2, 3, 1});  // [B, h, hd, L]
      const torch::Tensor v =
          kv.narrow(2, ch, ch).view({b, L, heads, hd}).transpose(1, 2);       // [B, h, L, hd]
      const torch::Tensor p = at::softmax(at::matmul(q, k) + text.mask, -1);  // [B, h, N, L]
      const torch::Tensor o =
          at::matmul(p, v).permute({0, 2, 1, 3}).reshape({b, n, ch});  // [B, N, c]
      t = t + at::linear(o, a.cross_out.w, a.cross_out.b);             // [B, N, c]
    }
    // MLP.
    {
      const torch::Tensor h = at::gelu(at::linear(
          at::layer_norm(t, {ch}, a.ln3.w, a.ln3.b, kNormEps), a.fc1.w, a.fc1.b));  // [B, N, 2c]
      t = t + at::linear(h, a.fc2.w, a.fc2.b);                                      // [B, N, c]
    }
    return x + at::linear(t, a.proj.w, a.proj.b).transpose(1, 2).reshape({b, ch, H, W});
  }
};

}  // namespace

DiffusionTrainNet::DiffusionTrainNet(DiffusionConfig config, torch::Device device)
    : config_(std::move(config)), device_(device) {}

DiffusionTrainNet::~DiffusionTrainNet() = default;

absl::StatusOr<std::unique_ptr<DiffusionTrainNet>> DiffusionTrainNet::Create(
    const DiffusionConfig& config, const TensorMap& weights, const std::string& device) {
  absl::StatusOr<DiffusionConfig> checked = diffusion_net::CheckedConfig(config);
  if (!checked.ok()) return checked.status();
  const DiffusionConfig& c = *checked;
  if (absl::Status s = diffusion_net::CheckWeights(c, weights); !s.ok()) return s;
  return torch_util::CatchOnDevice(
      "DiffusionTrainNet::Create", device,
      [&](const torch::Device& dev) -> absl::StatusOr<std::unique_ptr<DiffusionTrainNet>> {
        std::unique_ptr<DiffusionTrainNet> net(new DiffusionTrainNet(c, dev));
        absl::StatusOr<Weights> w = diffusion_net::LoadWeights(
            c, weights, dev, [&](const std::string& name, torch::Tensor& t) {
              t.requires_grad_(true);  // a leaf: the optimizer updates it in place
              net->params_.emplace_back(name, t);
            });
        if (!w.ok()) return w.status();
        net->w_ = std::make_unique<Weights>(*std::move(w));
        net->sinusoid_ =
            diffusion_net::Sinusoid(c.diffusion_steps, c.unet_widths[0]).to(dev);  // [T, W0]
        return net;
      });
}

int64_t DiffusionTrainNet::parameter_count() const {
  int64_t n = 0;
  for (const auto& [name, p] : params_) n += p.numel();
  return n;
}

torch::Tensor DiffusionTrainNet::CaptionIds(const std::vector<std::vector<int32_t>>& captions,
                                            int text_seq_len) {
  const int64_t b = static_cast<int64_t>(captions.size()), L = text_seq_len;
  torch::Tensor ids = torch::zeros({b, L}, torch::kInt64);  // [B, L]
  auto a = ids.accessor<int64_t, 2>();
  for (int64_t i = 0; i < b; ++i) {
    const int64_t n = std::min<int64_t>(L, 1 + static_cast<int64_t>(captions[i].size()));
    a[i][0] = kBosId;
    for (int64_t j = 1; j < n; ++j) a[i][j] = captions[i][j - 1];
  }
  return ids;
}

torch::Tensor DiffusionTrainNet::Forward(const torch::Tensor& x_t, const torch::Tensor& t,
                                         const torch::Tensor& caption_ids) const {
  const Weights& w = *w_;
  const int64_t b = caption_ids.size(0), L = caption_ids.size(1);
  TORCH_CHECK(L == config_.text_seq_len, "caption_ids have ", L, " columns, text_seq_len is ",
              config_.text_seq_len);
  // Key mask: a row's positions up to its last nonzero id (at least BOS) are its caption.
  const torch::Tensor positions = torch::arange(1, L + 1, caption_ids.options());  // [L]
  const torch::Tensor length =
      (caption_ids != 0).to(torch::kInt64).mul(positions).amax(1).clamp_min(1);  // [B]
  const torch::Tensor padding =
      torch::arange(L, caption_ids.options()).unsqueeze(0) >= length.unsqueeze(1);  // [B, L] bool
  const torch::Tensor mask = torch::zeros({b, L}, x_t.options())
                                 .masked_fill(padding, -std::numeric_limits<float>::infinity())
                                 .view({b, 1, 1, L});  // [B, 1, 1, L]
  TextBatch text{diffusion_net::EncodeText(w, config_, caption_ids, mask), mask, {}};
  if (config_.pooled_text) text.pooled = diffusion_net::PoolText(text.states, mask);  // [B, D]
  // Time embedding: temb = silu(fc2(silu(fc1(sinusoid(t))))).
  torch::Tensor temb = sinusoid_.index_select(0, t);        // [B, W0]
  temb = at::silu(at::linear(temb, w.time1.w, w.time1.b));  // [B, E]
  temb = at::silu(at::linear(temb, w.time2.w, w.time2.b));  // [B, E]
  return diffusion_net::WalkUNet(config_, w, TrainBlocks{config_}, x_t, temb,
                                 text);  // [B, C, H, W]
}

TensorMap DiffusionTrainNet::ExportWeights() const {
  torch::NoGradGuard no_grad;
  TensorMap out;
  for (const auto& [name, p] : params_) out.emplace(name, torch_util::FromFloatTensor(p.detach()));
  return out;
}

}  // namespace tandem

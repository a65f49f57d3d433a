#include "models/diffusion/diffusion_weights.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "models/torch/torch_util.h"

namespace tandem::diffusion_net {

absl::StatusOr<DiffusionConfig> CheckedConfig(const DiffusionConfig& config) {
  DiffusionConfig c = config;
  if (absl::Status s = c.Normalize(); !s.ok()) return s;
  return c;
}

namespace {

NormW BuildNorm(const Fetch& f, const std::string& p, int64_t n) {
  return {f(p + ".weight", {n}, Init::kOne), f(p + ".bias", {n}, Init::kZero)};
}

LinearW BuildLinear(const Fetch& f, const std::string& p, int64_t out, int64_t in, bool bias) {
  LinearW l;
  l.w = f(p + ".weight", {out, in}, Init::kFanIn);
  if (bias) l.b = f(p + ".bias", {out}, Init::kZero);
  return l;
}

ConvW BuildConv(const Fetch& f, const std::string& p, int64_t out, int64_t in, int64_t k,
                int64_t stride) {
  ConvW c;
  c.w = f(p + ".weight", {out, in, k, k}, Init::kFanIn);
  c.b = f(p + ".bias", {out}, Init::kZero);
  c.stride = stride;
  c.padding = k / 2;
  return c;
}

// d: the pooled text's width, 0 without pooled_text.
ResW BuildRes(const Fetch& f, const std::string& p, int64_t in, int64_t out, int64_t e, int64_t d,
              int* counter) {
  ResW r;
  r.in = in;
  r.out = out;
  r.index = (*counter)++;
  r.norm1 = BuildNorm(f, p + ".norm1", in);
  r.conv1 = BuildConv(f, p + ".conv1", out, in, 3, 1);
  r.time = BuildLinear(f, p + ".time", out, e, true);
  if (d > 0) r.text = BuildLinear(f, p + ".text", out, d, true);
  r.norm2 = BuildNorm(f, p + ".norm2", out);
  r.conv2 = BuildConv(f, p + ".conv2", out, out, 3, 1);
  if (in != out) r.skip = BuildConv(f, p + ".skip", out, in, 1, 1);
  return r;
}

AttnW BuildAttn(const Fetch& f, const std::string& p, int64_t c, int64_t d, int64_t heads,
                int* counter) {
  AttnW a;
  a.c = c;
  a.heads = heads;
  a.index = (*counter)++;
  a.norm = BuildNorm(f, p + ".norm", c);
  a.ln1 = BuildNorm(f, p + ".ln1", c);
  a.qkv = BuildLinear(f, p + ".self.qkv", 3 * c, c, false);
  a.self_out = BuildLinear(f, p + ".self.out", c, c, true);
  a.ln2 = BuildNorm(f, p + ".ln2", c);
  a.q = BuildLinear(f, p + ".cross.q", c, c, false);
  a.kv = BuildLinear(f, p + ".cross.kv", 2 * c, d, false);
  a.cross_out = BuildLinear(f, p + ".cross.out", c, c, true);
  a.ln3 = BuildNorm(f, p + ".ln3", c);
  a.fc1 = BuildLinear(f, p + ".mlp.fc1", 2 * c, c, true);
  a.fc2 = BuildLinear(f, p + ".mlp.fc2", c, 2 * c, true);
  a.proj = BuildLinear(f, p + ".proj", c, c, true);
  return a;
}

}  // namespace

Weights BuildWeights(const DiffusionConfig& c, const Fetch& f) {
  Weights w;
  const int64_t d = c.text_dim, w0 = c.unet_widths[0], e = 4 * w0;
  const int64_t pooled = c.pooled_text ? d : 0;
  auto res = [&](const std::string& p, int64_t in, int64_t out) {
    return BuildRes(f, p, in, out, e, pooled, &w.res_blocks);
  };
  const int levels = static_cast<int>(c.unet_widths.size());
  auto attended = [&](int level) {
    return std::find(c.attention_levels.begin(), c.attention_levels.end(), level) !=
           c.attention_levels.end();
  };
  // Text encoder.
  w.tok_embed = f("text.tok_embed.weight", {c.vocab_size, d}, Init::kEmbedding);
  w.pos_embed = f("text.pos_embed.weight", {c.text_seq_len, d}, Init::kEmbedding);
  for (int i = 0; i < c.text_layers; ++i) {
    const std::string p = absl::StrCat("text.layers.", i);
    TextLayerW l;
    l.norm1 = BuildNorm(f, p + ".norm1", d);
    l.qkv = BuildLinear(f, p + ".attn.qkv", 3 * d, d, true);
    l.out = BuildLinear(f, p + ".attn.out", d, d, true);
    l.norm2 = BuildNorm(f, p + ".norm2", d);
    l.fc1 = BuildLinear(f, p + ".mlp.fc1", 4 * d, d, true);
    l.fc2 = BuildLinear(f, p + ".mlp.fc2", d, 4 * d, true);
    w.text_layers.push_back(std::move(l));
  }
  w.text_norm = BuildNorm(f, "text.norm", d);
  // U-Net.
  w.time1 = BuildLinear(f, "unet.time.fc1", e, w0, true);
  w.time2 = BuildLinear(f, "unet.time.fc2", e, e, true);
  w.conv_in = BuildConv(f, "unet.conv_in", w0, c.channels, 3, 1);
  std::vector<int64_t> skips = {w0};
  int64_t ch = w0;
  w.down.resize(levels);
  for (int l = 0; l < levels; ++l) {
    const int64_t width = c.unet_widths[l];
    const std::string p = absl::StrCat("unet.down.", l);
    for (int r = 0; r < c.res_blocks; ++r) {
      w.down[l].res.push_back(res(absl::StrCat(p, ".res.", r), ch, width));
      ch = width;
      if (attended(l)) {
        w.down[l].attn.push_back(BuildAttn(f, absl::StrCat(p, ".attn.", r), ch, d,
                                           c.attention_heads, &w.attention_blocks));
      }
      skips.push_back(ch);
    }
    if (l + 1 < levels) {
      w.down[l].resample = BuildConv(f, p + ".downsample", ch, ch, 3, 2);
      skips.push_back(ch);
    }
  }
  w.mid1 = res("unet.mid.res.0", ch, ch);
  w.mid_attn = BuildAttn(f, "unet.mid.attn", ch, d, c.attention_heads, &w.attention_blocks);
  w.mid2 = res("unet.mid.res.1", ch, ch);
  w.up.resize(levels);
  for (int l = levels - 1; l >= 0; --l) {
    const int64_t width = c.unet_widths[l];
    const std::string p = absl::StrCat("unet.up.", l);
    for (int r = 0; r <= c.res_blocks; ++r) {
      const int64_t skip = skips.back();
      skips.pop_back();
      w.up[l].res.push_back(res(absl::StrCat(p, ".res.", r), ch + skip, width));
      ch = width;
      if (attended(l)) {
        w.up[l].attn.push_back(BuildAttn(f, absl::StrCat(p, ".attn.", r), ch, d, c.attention_heads,
                                         &w.attention_blocks));
      }
    }
    if (l > 0) w.up[l].resample = BuildConv(f, p + ".upsample", ch, ch, 3, 1);
  }
  w.out_norm = BuildNorm(f, "unet.out.norm", w0);
  w.out_conv = BuildConv(f, "unet.out.conv", c.channels, w0, 3, 1);
  return w;
}

std::vector<NamedShape> ExpectedTensors(const DiffusionConfig& c) {
  std::vector<NamedShape> out;
  BuildWeights(c, [&](const std::string& name, std::vector<int64_t> shape, Init) {
    out.push_back({name, std::move(shape)});
    return torch::Tensor();
  });
  return out;
}

absl::Status CheckWeights(const DiffusionConfig& c, const TensorMap& weights) {
  return torch_util::CheckTensorShapes(ExpectedTensors(c), weights);
}

absl::StatusOr<Weights> LoadWeights(
    const DiffusionConfig& c, const TensorMap& weights, const torch::Device& device,
    const std::function<void(const std::string& name, torch::Tensor& t)>& each) {
  absl::Status status;
  Weights w = BuildWeights(c, [&](const std::string& name, std::vector<int64_t>, Init) {
    if (!status.ok()) return torch::Tensor();
    absl::StatusOr<torch::Tensor> t = torch_util::ToFloatTensor(name, weights.at(name));
    if (!t.ok()) {
      status = t.status();
      return torch::Tensor();
    }
    torch::Tensor out = t->to(device).contiguous();  // [shape]
    if (each) each(name, out);
    return out;
  });
  if (!status.ok()) return status;
  return w;
}

torch::Tensor Sinusoid(int64_t timesteps, int64_t dim) {
  const int64_t half = dim / 2;
  torch::Tensor out = torch::zeros({timesteps, dim}, torch::kFloat64);  // [T, dim]
  double* p = out.data_ptr<double>();
  for (int64_t t = 0; t < timesteps; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = t * std::exp(-std::log(10000.0) * i / half);
      p[t * dim + i] = std::cos(angle);
      p[t * dim + half + i] = std::sin(angle);
    }
  }
  return out.to(torch::kFloat32);
}

torch::Tensor EncodeText(const Weights& w, const DiffusionConfig& c, const torch::Tensor& ids,
                         const torch::Tensor& mask) {
  const int64_t b = ids.size(0), L = ids.size(1), d = c.text_dim;
  const int64_t heads = c.text_heads, hd = d / heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  torch::Tensor x = at::embedding(w.tok_embed, ids) + w.pos_embed;  // [B, L, D]
  for (const TextLayerW& l : w.text_layers) {
    const torch::Tensor h = at::layer_norm(x, {d}, l.norm1.w, l.norm1.b, kNormEps);  // [B, L, D]
    const torch::Tensor qkv =
        at::linear(h, l.qkv.w, l.qkv.b).view({b, L, 3, heads, hd}).permute({2, 0, 3, 1, 4});
    // qkv: [3, B, heads, L, hd]
    const torch::Tensor scores =
        at::matmul(qkv[0], qkv[1].transpose(-1, -2)) * scale + mask;  // [B, heads, L, L]
    const torch::Tensor attn = at::matmul(at::softmax(scores, -1), qkv[2])
                                   .permute({0, 2, 1, 3})
                                   .reshape({b, L, d});                               // [B, L, D]
    x = x + at::linear(attn, l.out.w, l.out.b);                                       // [B, L, D]
    const torch::Tensor h2 = at::layer_norm(x, {d}, l.norm2.w, l.norm2.b, kNormEps);  // [B, L, D]
    x = x + at::linear(at::gelu(at::linear(h2, l.fc1.w, l.fc1.b)), l.fc2.w, l.fc2.b);
  }
  return at::layer_norm(x, {d}, w.text_norm.w, w.text_norm.b, kNormEps);  // [B, L, D]
}

torch::Tensor PoolText(const torch::Tensor& states, const torch::Tensor& mask) {
  const int64_t b = states.size(0), L = states.size(1);
  const torch::Tensor keep = (mask.view({b, L, 1}) == 0).to(states.scalar_type());  // [B, L, 1]
  return (states * keep).sum(1) / keep.sum(1);                                       // [B, D]
}

torch::Tensor Upsample2x(const torch::Tensor& x) {
  const int64_t rows = x.size(0), c = x.size(1), hh = x.size(2), ww = x.size(3);
  return x.view({rows, c, hh, 1, ww, 1})
      .expand({rows, c, hh, 2, ww, 2})
      .reshape({rows, c, 2 * hh, 2 * ww});  // [R, c, 2H, 2W]
}

}  // namespace tandem::diffusion_net

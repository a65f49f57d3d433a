#include "models/llama/llama_train_net.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "models/llama/cpu_kernels.h"
#include "models/llama/llama.h"
#include "models/llama/train_attention.h"
#include "models/llama/train_elementwise.h"
#include "models/torch/torch_util.h"

namespace tandem {

using torch_util::ShapeString;

absl::StatusOr<std::unique_ptr<LlamaTrainNet>> LlamaTrainNet::Create(const LlamaConfig& config,
                                                                     const TensorMap& weights,
                                                                     const std::string& device) {
  LlamaConfig c = config;
  if (absl::Status s = c.Normalize(); !s.ok()) return s;
  return torch_util::CatchOnDevice(
      "LlamaTrainNet::Create", device,
      [&](const torch::Device& dev) -> absl::StatusOr<std::unique_ptr<LlamaTrainNet>> {
        std::unique_ptr<LlamaTrainNet> net(new LlamaTrainNet(c, dev));
        for (const LlamaTensorShape& e : LlamaTensorShapes(c)) {
          auto it = weights.find(e.name);
          if (it == weights.end()) {
            return absl::InvalidArgumentError(absl::StrCat("missing tensor ", e.name));
          }
          if (it->second.shape != e.shape) {
            return absl::InvalidArgumentError(
                absl::StrCat("tensor ", e.name, " has shape ", ShapeString(it->second.shape),
                             ", the config needs ", ShapeString(e.shape)));
          }
          absl::StatusOr<torch::Tensor> t = torch_util::ToFloatTensor(e.name, it->second);
          if (!t.ok()) return t.status();
          torch::Tensor p = t->to(dev).set_requires_grad(true);
          net->params_.emplace_back(e.name, p);
          net->by_name_.emplace(e.name, p);
        }
        std::sort(net->params_.begin(), net->params_.end(),
                  [](const auto& a, const auto& b) { return a.first < b.first; });
        // Rotary tables, in double as in llama.cc: angle(pos, i) = pos * theta^(-2i/hd).
        const int64_t hd = c.head_dim();
        const torch::Tensor inv_freq = torch::pow(
            c.rope_theta, -torch::arange(0, hd, 2, torch::kFloat64) / static_cast<double>(hd));
        const torch::Tensor angle =
            torch::outer(torch::arange(c.seq_len, torch::kFloat64), inv_freq);  // [S, hd/2]
        net->cos_ = angle.cos().to(torch::kFloat32).to(dev);
        net->sin_ = angle.sin().to(torch::kFloat32).to(dev);
        return net;
      });
}

const torch::Tensor& LlamaTrainNet::P(const std::string& name) const { return by_name_.at(name); }

namespace {

// The fused CPU attention of train_attention.h as an autograd function: saves q, k, v, the
// output and the log-sum-exp; the backward recomputes the probabilities from them.
class FusedCausalAttention : public torch::autograd::Function<FusedCausalAttention> {
 public:
  // q: [B, T, H, hd]; k, v: [B, T, KV, hd], float32 on the CPU -> [B, T, H, hd].
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q_in,
                               const torch::Tensor& k_in, const torch::Tensor& v_in,
                               double scale) {
    const torch::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    const cpu_kernels::CausalAttention a = Shape(q, k, scale);
    torch::Tensor out = torch::empty_like(q);                            // [B, T, H, hd]
    torch::Tensor lse = torch::empty({a.batch, a.heads, a.seq}, q.options());  // [B, H, T]
    const cpu_kernels::Width width = cpu_kernels::WidestWidth();
    at::parallel_for(0, a.tasks(), 1, [&](int64_t begin, int64_t end) {
      cpu_kernels::CausalAttentionForward(width, a, q.data_ptr<float>(), k.data_ptr<float>(),
                                          v.data_ptr<float>(), out.data_ptr<float>(),
                                          lse.data_ptr<float>(), begin, end);
    });
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3],
                        &lse = saved[4];
    const cpu_kernels::CausalAttention a = Shape(q, k, ctx->saved_data["scale"].toDouble());
    const torch::Tensor dout = grads[0].contiguous();  // [B, T, H, hd]
    torch::Tensor dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
    const cpu_kernels::Width width = cpu_kernels::WidestWidth();
    at::parallel_for(0, a.tasks(), 1, [&](int64_t begin, int64_t end) {
      cpu_kernels::CausalAttentionBackward(
          width, a, q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
          out.data_ptr<float>(), lse.data_ptr<float>(), dout.data_ptr<float>(),
          dq.data_ptr<float>(), dk.data_ptr<float>(), dv.data_ptr<float>(), begin, end);
    });
    return {dq, dk, dv, torch::Tensor()};
  }

 private:
  static cpu_kernels::CausalAttention Shape(const torch::Tensor& q, const torch::Tensor& k,
                                            double scale) {
    TORCH_CHECK(q.scalar_type() == torch::kFloat && q.device().is_cpu(),
                "fused attention takes float32 CPU tensors");
    cpu_kernels::CausalAttention a;
    a.batch = q.size(0), a.seq = q.size(1), a.heads = q.size(2), a.kv_heads = k.size(2);
    a.head_dim = q.size(3), a.scale = static_cast<float>(scale);
    return a;
  }
};

// Rows per block of RMSNorm's gain gradient: each block sums its rows in order, then the
// blocks are summed in order, so the gradient does not depend on how many threads ran them.
constexpr int64_t kGainBlockRows = 64;

// Rows of `dim` floats per parallel task: about 16K floats, so that small tensors stay on one
// thread.
int64_t RowGrain(int64_t dim) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, dim)); }

void CheckCpuFloat(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat && t.device().is_cpu(), what,
              " takes float32 CPU tensors");
}

class FusedRmsNorm : public torch::autograd::Function<FusedRmsNorm> {
 public:
  // x: [..., dim]; gain: [dim] -> [..., dim].
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x_in,
                               const torch::Tensor& gain_in, double eps) {
    CheckCpuFloat(x_in, "fused RMSNorm");
    const torch::Tensor x = x_in.contiguous(), gain = gain_in.contiguous();
    const int64_t dim = x.size(-1), rows = x.numel() / dim;
    torch::Tensor y = torch::empty_like(x);                       // [..., dim]
    torch::Tensor inv_rms = torch::empty({rows}, x.options());   // [rows]
    const cpu_kernels::Width width = cpu_kernels::WidestWidth();
    at::parallel_for(0, rows, RowGrain(dim), [&](int64_t begin, int64_t end) {
      cpu_kernels::RmsNormForward(width, x.data_ptr<float>(), gain.data_ptr<float>(), dim,
                                  static_cast<float>(eps), y.data_ptr<float>(),
                                  inv_rms.data_ptr<float>(), begin, end);
    });
    ctx->save_for_backward({x, gain, inv_rms});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &gain = saved[1], &inv_rms = saved[2];
    const torch::Tensor dy = grads[0].contiguous();  // [..., dim]
    const int64_t dim = x.size(-1), rows = x.numel() / dim;
    const int64_t blocks = (rows + kGainBlockRows - 1) / kGainBlockRows;
    torch::Tensor dx = torch::empty_like(x);                          // [..., dim]
    torch::Tensor partial = torch::zeros({blocks, dim}, x.options());  // [blocks, dim]
    const cpu_kernels::Width width = cpu_kernels::WidestWidth();
    const int64_t grain = std::max<int64_t>(1, RowGrain(dim) / kGainBlockRows);
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
      for (int64_t blk = begin; blk < end; ++blk) {
        cpu_kernels::RmsNormBackward(
            width, x.data_ptr<float>(), gain.data_ptr<float>(), inv_rms.data_ptr<float>(),
            dy.data_ptr<float>(), dim, dx.data_ptr<float>(),
            partial.data_ptr<float>() + blk * dim, blk * kGainBlockRows,
            std::min(rows, (blk + 1) * kGainBlockRows));
      }
    });
    torch::Tensor dgain = torch::zeros({dim}, x.options());  // [dim]: the blocks, in order
    float* g = dgain.data_ptr<float>();
    const float* p = partial.data_ptr<float>();
    for (int64_t blk = 0; blk < blocks; ++blk) {
      for (int64_t d = 0; d < dim; ++d) g[d] += p[blk * dim + d];
    }
    return {dx, dgain, torch::Tensor()};
  }
};

// Elements per parallel task of SwiGLU.
constexpr int64_t kElementGrain = 16384;

class FusedSwiGlu : public torch::autograd::Function<FusedSwiGlu> {
 public:
  // a, b: the same shape -> silu(a) * b.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& a_in,
                               const torch::Tensor& b_in) {
    CheckCpuFloat(a_in, "fused SwiGLU");
    CheckCpuFloat(b_in, "fused SwiGLU");
    const torch::Tensor a = a_in.contiguous(), b = b_in.contiguous();
    torch::Tensor out = torch::empty_like(a);
    const cpu_kernels::Width width = cpu_kernels::WidestWidth();
    at::parallel_for(0, a.numel(), kElementGrain, [&](int64_t begin, int64_t end) {
      cpu_kernels::SwiGluForward(width, a.data_ptr<float>(), b.data_ptr<float>(),
                                 out.data_ptr<float>(), begin, end);
    });
    ctx->save_for_backward({a, b});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &a = saved[0], &b = saved[1];
    const torch::Tensor dout = grads[0].contiguous();
    torch::Tensor da = torch::empty_like(a), db = torch::empty_like(b);
    const cpu_kernels::Width width = cpu_kernels::WidestWidth();
    at::parallel_for(0, a.numel(), kElementGrain, [&](int64_t begin, int64_t end) {
      cpu_kernels::SwiGluBackward(width, a.data_ptr<float>(), b.data_ptr<float>(),
                                  dout.data_ptr<float>(), da.data_ptr<float>(),
                                  db.data_ptr<float>(), begin, end);
    });
    return {da, db};
  }
};

class FusedRope : public torch::autograd::Function<FusedRope> {
 public:
  // x: [B, T, H, hd]; cos, sin: [T, hd/2] -> [B, T, H, hd].
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& cos, const torch::Tensor& sin) {
    CheckCpuFloat(x, "fused RoPE");
    const torch::Tensor c = cos.contiguous(), s = sin.contiguous();  // [T, hd/2]
    ctx->save_for_backward({c, s});
    return Rotate(x, c, s, /*inverse=*/false);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    return {Rotate(grads[0], saved[0], saved[1], /*inverse=*/true), torch::Tensor(),
            torch::Tensor()};
  }

 private:
  static torch::Tensor Rotate(const torch::Tensor& x_in, const torch::Tensor& cos,
                              const torch::Tensor& sin, bool inverse) {
    const torch::Tensor x = x_in.contiguous();  // [B, T, H, hd]
    const int64_t t = x.size(1), h = x.size(2), hd = x.size(3), rows = x.size(0) * t;
    torch::Tensor y = torch::empty_like(x);
    at::parallel_for(0, rows, RowGrain(h * hd), [&](int64_t begin, int64_t end) {
      cpu_kernels::Rotate(x.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), t,
                          h, hd, inverse, y.data_ptr<float>(), begin, end);
    });
    return y;
  }
};

}  // namespace

torch::Tensor CausalSelfAttention(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, double scale, bool fused) {
  const int64_t b = q.size(0), t = q.size(1), h = q.size(2), hd = q.size(3), kv = k.size(2);
  if (fused) return FusedCausalAttention::apply(q, k, v, scale).view({b, t, h * hd});
  const int64_t g = h / kv;
  // Additive causal mask: 0 on and below the diagonal, -inf above.
  const torch::Tensor mask =
      torch::full({t, t}, -INFINITY, torch::TensorOptions().device(q.device())).triu(1);  // [T, T]
  // Grouped-query attention: query head j attends with kv head j / g, so the g query heads of
  // a group are stacked as extra rows instead of repeating K and V.
  torch::Tensor qg = q.view({b, t, kv, g, hd}).permute({0, 2, 3, 1, 4})
                         .reshape({b, kv, g * t, hd});     // [B, KV, G*T, hd]
  torch::Tensor kt = k.permute({0, 2, 3, 1});               // [B, KV, hd, T]
  torch::Tensor vt = v.permute({0, 2, 1, 3});               // [B, KV, T, hd]
  torch::Tensor scores = torch::matmul(qg, kt).mul(scale)   // [B, KV, G*T, T]
                             .view({b, kv, g, t, t}).add(mask);
  torch::Tensor probs = torch::softmax(scores, -1).view({b, kv, g * t, t});
  return torch::matmul(probs, vt)                           // [B, KV, G*T, hd]
      .view({b, kv, g, t, hd}).permute({0, 3, 1, 2, 4})
      .reshape({b, t, h * hd});                             // [B, T, H*hd]
}

torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& gain, double eps, bool fused) {
  if (fused) return FusedRmsNorm::apply(x, gain, eps);
  return x * torch::rsqrt(x.square().mean(-1, /*keepdim=*/true) + eps) * gain;
}

torch::Tensor SwiGlu(const torch::Tensor& a, const torch::Tensor& b, bool fused) {
  return fused ? FusedSwiGlu::apply(a, b) : torch::silu(a) * b;
}

torch::Tensor Rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                   bool fused) {
  if (fused) return FusedRope::apply(x, cos, sin);
  const auto b = x.size(0), t = x.size(1), h = x.size(2), hd = x.size(3);
  torch::Tensor pairs = x.reshape({b, t, h, hd / 2, 2});  // [B, T, H, hd/2, 2]
  torch::Tensor x0 = pairs.select(-1, 0), x1 = pairs.select(-1, 1);  // [B, T, H, hd/2]
  torch::Tensor c = cos.view({1, t, 1, hd / 2}), s = sin.view({1, t, 1, hd / 2});
  return torch::stack({x0 * c - x1 * s, x0 * s + x1 * c}, -1).reshape({b, t, h, hd});
}

torch::Tensor LlamaTrainNet::Forward(const torch::Tensor& tokens, const torch::Tensor& dropout,
                                     torch::ScalarType matmul_dtype) const {
  const LlamaConfig& c = config_;
  const int64_t b = tokens.size(0), t = tokens.size(1);
  const int64_t hd = c.head_dim(), h = c.n_heads, kv = c.n_kv_heads;
  TORCH_CHECK(t <= c.seq_len, "sequence of ", t, " tokens exceeds seq_len ", c.seq_len);
  TORCH_CHECK(!dropout.defined() || dropout.sizes() == torch::IntArrayRef({b, DropoutSites(), t,
                                                                          int64_t{c.dim}}),
              "dropout multipliers of shape ", dropout.sizes(), " for ", b, " x ", t, " tokens");
  const torch::Tensor cos = cos_.narrow(0, 0, t), sin = sin_.narrow(0, 0, t);  // [T, hd/2]
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  // The CPU's fused kernels (attention, RMSNorm, RoPE, SwiGLU); ATen ops elsewhere.
  const bool fused = device_.is_cpu();
  // Site s's multipliers applied to y [B, T, dim] (y itself without dropout).
  auto drop = [&](const torch::Tensor& y, int64_t site) {
    return dropout.defined() ? y * dropout.select(1, site) : y;  // [B, T, dim]
  };
  // in [..., in] (already in matmul_dtype) times weight `w` [out, in] -> [..., out] float32.
  // `.to` is the identity when the dtypes agree, so float32 training is the plain linear.
  auto linear = [&](const torch::Tensor& in, const torch::Tensor& w) {
    return torch::linear(in, w.to(matmul_dtype)).to(torch::kFloat);
  };

  torch::Tensor x = drop(torch::embedding(P("tok_embeddings.weight"), tokens), 0);  // [B, T, dim]
  for (int l = 0; l < c.n_layers; ++l) {
    torch_util::LayerBoundary(x);
    const std::string p = absl::StrCat("layers.", l, ".");
    torch::Tensor hn =  // [B, T, dim] in matmul_dtype
        RmsNorm(x, P(p + "attention_norm.weight"), c.norm_eps, fused).to(matmul_dtype);
    torch::Tensor q = linear(hn, P(p + "attention.wq.weight")).view({b, t, h, hd});
    torch::Tensor k = linear(hn, P(p + "attention.wk.weight")).view({b, t, kv, hd});
    torch::Tensor v = linear(hn, P(p + "attention.wv.weight")).view({b, t, kv, hd});
    q = Rope(q, cos, sin, fused);
    k = Rope(k, cos, sin, fused);
    const torch::Tensor att =  // [B, T, H*hd]
        CausalSelfAttention(q, k, v, scale, fused);
    x = x + drop(linear(att.to(matmul_dtype), P(p + "attention.wo.weight")), 1 + 2 * l);
    hn = RmsNorm(x, P(p + "ffn_norm.weight"), c.norm_eps, fused).to(matmul_dtype);
    const torch::Tensor gate = linear(hn, P(p + "feed_forward.w1.weight"));  // [B, T, hidden]
    const torch::Tensor up = linear(hn, P(p + "feed_forward.w3.weight"));    // [B, T, hidden]
    const torch::Tensor mixed = SwiGlu(gate, up, fused).to(matmul_dtype);   // [B, T, hidden]
    x = x + drop(linear(mixed, P(p + "feed_forward.w2.weight")), 2 + 2 * l);
  }
  x = RmsNorm(x, P("norm.weight"), c.norm_eps, fused).to(matmul_dtype);
  const torch::Tensor& out = c.tie_embeddings ? P("tok_embeddings.weight") : P("output.weight");
  return linear(x, out);  // [B, T, vocab]
}

TensorMap LlamaTrainNet::ExportWeights() const {
  TensorMap out;
  torch::NoGradGuard no_grad;
  for (const auto& [name, p] : params_) out[name] = torch_util::FromFloatTensor(p.detach());
  return out;
}

}  // namespace tandem

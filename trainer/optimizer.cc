#include "trainer/optimizer.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "models/torch/torch_util.h"

namespace tandem {

bool DecayByDefault(const std::string& name, const torch::Tensor& param, bool decay_all) {
  if (decay_all) return true;
  return param.dim() >= 2 && !absl::StrContains(name, "embed");
}

bool OrthogonalizeByDefault(const std::string& name, const torch::Tensor& param) {
  return param.dim() == 2 && !absl::StrContains(name, "embed") && name != "output.weight";
}

torch::Tensor NewtonSchulz5(const torch::Tensor& g, int steps) {
  constexpr double a = 3.4445, b = -4.7750, c = 2.0315;
  torch::NoGradGuard no_grad;
  torch::Tensor x = g.dim() == 2 ? g.unsqueeze(0) : g;                      // [n, r, c]
  x = x / (x.flatten(1).norm(2, {1}).view({-1, 1, 1}) + 1e-7);              // [n, r, c]
  const bool tall = x.size(1) > x.size(2);
  if (tall) x = x.transpose(1, 2).contiguous();                             // [n, w, l], w <= l
  for (int i = 0; i < steps; ++i) {
    torch::Tensor gram = torch::bmm(x, x.transpose(1, 2));                  // [n, w, w]
    torch::Tensor poly = torch::baddbmm(gram, gram, gram, /*beta=*/b, /*alpha=*/c);  // [n, w, w]
    x = torch::baddbmm(x, poly, x, /*beta=*/a, /*alpha=*/1.0);              // [n, w, l]
  }
  if (tall) x = x.transpose(1, 2).contiguous();                             // [n, r, c]
  return g.dim() == 2 ? x.squeeze(0) : x;
}

Optimizer::Optimizer(std::vector<Param> params, Options options)
    : params_(std::move(params)), options_(options) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Param& p = params_[i];
    m_.push_back(torch::zeros_like(p.value));
    v_.push_back(torch::zeros_like(p.value));
    if (!p.orthogonalize) continue;
    auto same = std::find_if(muon_groups_.begin(), muon_groups_.end(), [&](const auto& group) {
      return params_[group.front()].value.sizes() == p.value.sizes();
    });
    if (same == muon_groups_.end()) {
      muon_groups_.push_back({i});
    } else {
      same->push_back(i);
    }
  }
}

double Optimizer::GradNorm() const {
  torch::NoGradGuard no_grad;
  // Sum of squares in float64 so the norm does not depend on summation order more than needed.
  double sum = 0;
  for (const Param& p : params_) {
    const torch::Tensor& g = p.value.grad();
    if (!g.defined()) continue;
    sum += g.to(torch::kFloat64).pow(2).sum().item<double>();
  }
  return std::sqrt(sum);
}

void Optimizer::ZeroGrad() {
  for (Param& p : params_) {
    torch::Tensor g = p.value.mutable_grad();
    if (g.defined()) g.zero_();
  }
}

double Optimizer::Step(double lr, double grad_clip) {
  torch::NoGradGuard no_grad;
  const double norm = GradNorm();
  const double scale = (grad_clip > 0 && norm > grad_clip) ? grad_clip / (norm + 1e-6) : 1.0;
  ++steps_;
  for (size_t i = 0; i < params_.size(); ++i) {
    const torch::Tensor& g = params_[i].value.grad();
    if (g.defined() && !params_[i].orthogonalize) AdamUpdate(i, scale != 1.0 ? g * scale : g, lr);
  }
  for (const std::vector<size_t>& group : muon_groups_) MuonUpdate(group, scale, lr);
  ZeroGrad();
  return norm;
}

void Optimizer::AdamUpdate(size_t i, const torch::Tensor& g, double lr) {
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(steps_));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(steps_));
  Param& p = params_[i];
  m_[i].mul_(b1).add_(g, 1.0 - b1);
  v_[i].mul_(b2).addcmul_(g, g, 1.0 - b2);
  if (p.decay && options_.weight_decay > 0) p.value.mul_(1.0 - lr * options_.weight_decay);
  torch::Tensor denom = (v_[i] / bc2).sqrt_().add_(options_.eps);  // [same as p]
  p.value.addcdiv_(m_[i], denom, -lr / bc1);
}

void Optimizer::MuonUpdate(const std::vector<size_t>& group, double grad_scale, double lr) {
  const double mu = options_.muon_momentum;
  std::vector<size_t> stepped;
  std::vector<torch::Tensor> nesterov;
  for (size_t i : group) {
    torch::Tensor g = params_[i].value.grad();  // [rows, cols]
    if (!g.defined()) continue;
    if (grad_scale != 1.0) g = g * grad_scale;
    m_[i].mul_(mu).add_(g);
    nesterov.push_back(g.add(m_[i], mu));
    stepped.push_back(i);
  }
  if (stepped.empty()) return;
  const torch::Tensor u =  // [n, rows, cols] float32
      NewtonSchulz5(torch::stack(nesterov).to(options_.newton_schulz_dtype)).to(torch::kFloat);
  for (size_t j = 0; j < stepped.size(); ++j) {
    Param& p = params_[stepped[j]];
    const double rms_match = 0.2 * std::sqrt(static_cast<double>(
                                       std::max(p.value.size(0), p.value.size(1))));
    if (p.decay && options_.weight_decay > 0) p.value.mul_(1.0 - lr * options_.weight_decay);
    p.value.add_(u[static_cast<int64_t>(j)], -lr * rms_match);
  }
}

TensorMap Optimizer::State() const {
  TensorMap out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out["m." + params_[i].name] = torch_util::FromFloatTensor(m_[i]);
    out["v." + params_[i].name] = torch_util::FromFloatTensor(v_[i]);
  }
  return out;
}

absl::Status Optimizer::LoadState(const TensorMap& state, int64_t steps) {
  return torch_util::CatchTorch("Optimizer::LoadState", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> m, v;
    for (const Param& p : params_) {
      for (const char* which : {"m.", "v."}) {
        const std::string key = which + p.name;
        auto it = state.find(key);
        if (it == state.end()) {
          return absl::InvalidArgumentError(absl::StrCat("optimizer state lacks ", key));
        }
        absl::StatusOr<torch::Tensor> t = torch_util::ToFloatTensor(key, it->second);
        if (!t.ok()) return t.status();
        if (t->sizes() != p.value.sizes()) {
          return absl::InvalidArgumentError(
              absl::StrCat("optimizer state ", key, " has shape ",
                           torch_util::ShapeString(t->sizes().vec()), ", the parameter ",
                           torch_util::ShapeString(p.value.sizes().vec())));
        }
        (which[0] == 'm' ? m : v).push_back(t->to(p.value.device()));
      }
    }
    m_ = std::move(m);
    v_ = std::move(v);
    steps_ = steps;
    return absl::OkStatus();
  });
}

}  // namespace tandem

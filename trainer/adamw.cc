#include "trainer/adamw.h"

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

AdamW::AdamW(std::vector<Param> params, Options options)
    : params_(std::move(params)), options_(options) {
  torch::NoGradGuard no_grad;
  for (const Param& p : params_) {
    m_.push_back(torch::zeros_like(p.value));
    v_.push_back(torch::zeros_like(p.value));
  }
}

double AdamW::GradNorm() const {
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

void AdamW::ZeroGrad() {
  for (Param& p : params_) {
    torch::Tensor g = p.value.mutable_grad();
    if (g.defined()) g.zero_();
  }
}

double AdamW::Step(double lr, double grad_clip) {
  torch::NoGradGuard no_grad;
  const double norm = GradNorm();
  const double scale = (grad_clip > 0 && norm > grad_clip) ? grad_clip / (norm + 1e-6) : 1.0;
  ++steps_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(steps_));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(steps_));
  for (size_t i = 0; i < params_.size(); ++i) {
    Param& p = params_[i];
    torch::Tensor g = p.value.grad();
    if (!g.defined()) continue;
    if (scale != 1.0) g = g * scale;
    m_[i].mul_(b1).add_(g, 1.0 - b1);
    v_[i].mul_(b2).addcmul_(g, g, 1.0 - b2);
    if (p.decay && options_.weight_decay > 0) p.value.mul_(1.0 - lr * options_.weight_decay);
    torch::Tensor denom = (v_[i] / bc2).sqrt_().add_(options_.eps);  // [same as p]
    p.value.addcdiv_(m_[i], denom, -lr / bc1);
  }
  ZeroGrad();
  return norm;
}

TensorMap AdamW::State() const {
  TensorMap out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out["m." + params_[i].name] = torch_util::FromFloatTensor(m_[i]);
    out["v." + params_[i].name] = torch_util::FromFloatTensor(v_[i]);
  }
  return out;
}

absl::Status AdamW::LoadState(const TensorMap& state, int64_t steps) {
  return torch_util::CatchTorch("AdamW::LoadState", [&]() -> absl::Status {
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

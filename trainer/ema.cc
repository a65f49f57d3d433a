#include "trainer/ema.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "models/torch/torch_util.h"

namespace tandem {

Ema::Ema(const std::vector<Optimizer::Param>& params, double decay)
    : params_(params), decay_(decay) {
  torch::NoGradGuard no_grad;
  for (const Optimizer::Param& p : params_) average_.push_back(p.value.detach().clone());
}

void Ema::Update(int64_t step) {
  torch::NoGradGuard no_grad;
  const double d = std::min(decay_, (1.0 + step) / (10.0 + step));
  for (size_t i = 0; i < params_.size(); ++i) average_[i].mul_(d).add_(params_[i].value, 1 - d);
}

TensorMap Ema::State() const {
  TensorMap out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out["ema." + params_[i].name] = torch_util::FromFloatTensor(average_[i]);
  }
  return out;
}

absl::Status Ema::LoadState(const TensorMap& state) {
  return torch_util::CatchTorch("Ema::LoadState", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
      auto it = state.find("ema." + params_[i].name);
      if (it == state.end()) continue;
      absl::StatusOr<torch::Tensor> t = torch_util::ToFloatTensor(it->first, it->second);
      if (!t.ok()) return t.status();
      if (t->sizes() != average_[i].sizes()) {
        return absl::InvalidArgumentError(
            absl::StrCat("the checkpoint's ema.", params_[i].name, " has another shape"));
      }
      average_[i].copy_(t->to(average_[i].device()));
    }
    return absl::OkStatus();
  });
}

void Ema::SwapIn() {
  torch::NoGradGuard no_grad;
  held_.clear();
  for (size_t i = 0; i < params_.size(); ++i) {
    held_.push_back(params_[i].value.detach().clone());
    params_[i].value.copy_(average_[i]);
  }
}

void Ema::SwapOut() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < held_.size(); ++i) params_[i].value.copy_(held_[i]);
  held_.clear();
}

}  // namespace tandem

#include "models/diffusion/diffusion_schedule.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace tandem {

std::vector<double> CosineBetas(int diffusion_steps) {
  const int T = diffusion_steps;
  if (T <= 0) return {};
  constexpr double kS = 0.008;
  constexpr double kMaxBeta = 0.999;
  const double half_pi = std::acos(-1.0) / 2;
  auto f = [&](int t) {
    const double c = std::cos((static_cast<double>(t) / T + kS) / (1 + kS) * half_pi);
    return c * c;
  };
  std::vector<double> betas(T);
  for (int t = 0; t < T; ++t) betas[t] = std::min(1.0 - f(t + 1) / f(t), kMaxBeta);
  return betas;
}

std::vector<double> CosineAlphaBar(int diffusion_steps) {
  std::vector<double> ab = CosineBetas(diffusion_steps);
  double product = 1.0;
  for (double& v : ab) {
    product *= 1.0 - v;
    v = product;
  }
  return ab;
}

std::vector<int> SamplingTimesteps(int diffusion_steps, int steps) {
  const int64_t T = diffusion_steps;
  if (steps < 1 || steps > T) return {};
  if (steps == 1) return {static_cast<int>(T - 1)};
  std::vector<int> out(steps);
  const int64_t span = steps - 1;
  for (int64_t i = 0; i < steps; ++i) {
    // round((T-1) * (span-i) / span), half up, in integers.
    out[i] = static_cast<int>(((T - 1) * (span - i) * 2 + span) / (2 * span));
  }
  return out;
}

}  // namespace tandem

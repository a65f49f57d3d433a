// The diffusion model's noise schedule, torch-free: the cosine schedule of Nichol & Dhariwal
// (2021) over T training timesteps, and the timesteps a sampler visits. Pure functions.
//
// Timesteps are 0-based: timestep t in [0, T) is the state after t + 1 forward noising steps,
// x_t = sqrt(ab[t]) x_0 + sqrt(1 - ab[t]) eps; "timestep -1" is the clean image (ab = 1).
#ifndef TANDEM_MODELS_DIFFUSION_DIFFUSION_SCHEDULE_H_
#define TANDEM_MODELS_DIFFUSION_DIFFUSION_SCHEDULE_H_

#include <vector>

namespace tandem {

// beta[t] = min(1 - f(t+1)/f(t), 0.999) for t in [0, T), with
// f(t) = cos^2(((t/T) + s) / (1 + s) * pi/2), s = 0.008. Computed in double.
std::vector<double> CosineBetas(int diffusion_steps);
// ab[t] = prod_{i <= t} (1 - beta[i]) for t in [0, T): the cosine alpha_bar(t+1)/alpha_bar(0)
// except where a beta was clipped (the last few timesteps). Computed in double.
std::vector<double> CosineAlphaBar(int diffusion_steps);
// `steps` distinct timesteps evenly spaced from T-1 down to 0 (rounded to nearest), descending;
// {T-1} when steps == 1. Empty unless 1 <= steps <= T.
std::vector<int> SamplingTimesteps(int diffusion_steps, int steps);

}  // namespace tandem

#endif  // TANDEM_MODELS_DIFFUSION_DIFFUSION_SCHEDULE_H_

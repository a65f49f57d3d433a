// Entry points into the LibTorch diffusion model for tests: one sampler update on plain float
// vectors, a sample's float state, the raw network output. Torch-free header; implemented in
// diffusion.cc.
#ifndef TANDEM_MODELS_DIFFUSION_DIFFUSION_HOOKS_H_
#define TANDEM_MODELS_DIFFUSION_DIFFUSION_HOOKS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "models/diffusion/diffusion_config.h"
#include "models/image_model.h"

namespace tandem {

// One denoising update of one sample from timestep t to t_prev (the next timestep of its list,
// or -1 after the last), exactly as ImageModel::Step applies it after the U-Net: model_output is
// the (guidance-combined) eps or v prediction per config.prediction; x0 is the clipped x_0
// estimate. DDIM noise (eta > 0) and DDPM noise come from a CPU generator seeded with
// noise_seed. All vectors hold channels*image_size^2 floats, CHW.
absl::Status DiffusionSamplerUpdate(const DiffusionConfig& config, DiffusionSampler sampler,
                                    float eta, int t, int t_prev, absl::Span<const float> x_t,
                                    absl::Span<const float> model_output, uint64_t noise_seed,
                                    std::vector<float>* x_prev, std::vector<float>* x0);

// The float state of a sample of a model made by CreateDiffusionModel, CHW: x at the sample's
// current timestep (the final image once every step is done) and, after a step, the clipped x_0
// estimate (else empty). For tests that need more than 8-bit pixels. INVALID_ARGUMENT for another
// ImageModel or a sample that is not started.
absl::Status DiffusionSampleLatent(const ImageModel& model, int sample, std::vector<float>* x,
                                   std::vector<float>* x0);

// Test entry point: the raw network output (eps or v per config.prediction, no guidance, no
// sampler update) of a model made by CreateDiffusionModel for R rows: x holds R*C*H*W floats
// (x_t, CHW per row), t the R timesteps in [0, T), captions the R token lists (without BOS; the
// model adds BOS, cuts and pads as for sampling). `out` receives R*C*H*W floats. For checking
// the training forward against the served one. INVALID_ARGUMENT for another ImageModel or
// mismatched sizes.
absl::Status DiffusionModelOutput(const ImageModel& model, absl::Span<const float> x,
                                  absl::Span<const int64_t> t,
                                  const std::vector<std::vector<int32_t>>& captions,
                                  std::vector<float>* out);

}  // namespace tandem

#endif  // TANDEM_MODELS_DIFFUSION_DIFFUSION_HOOKS_H_

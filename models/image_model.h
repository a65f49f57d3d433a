// ImageModel: one loaded text-to-image diffusion model on one device, with the run state of the
// samples being generated. Torch-free interface; the LibTorch implementation is diffusion.cc.
// The device loop that owns it is its only caller (not thread-safe).
//
// A sample is one image being denoised: StartSample encodes its caption (and negative caption),
// draws x_T ~ N(0, I) from its own seed, and fixes its timestep sequence; each Step call advances
// every listed sample by one denoising step in ONE batched U-Net forward, whatever step each is at
// (each row carries its own timestep and guidance). Results depend only on the sample's spec, not
// on what was batched alongside.
#ifndef TANDEM_MODELS_IMAGE_MODEL_H_
#define TANDEM_MODELS_IMAGE_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "models/diffusion/diffusion_config.h"
#include "models/formats/safetensors.h"

namespace tandem {

enum class DiffusionSampler { kDdim, kDdpm };

struct ImageSampleSpec {
  std::vector<int32_t> caption;           // token ids, without BOS (the model adds BOS, cuts, pads)
  std::vector<int32_t> negative_caption;  // empty: the unconditional (empty) caption
  int steps = 50;                         // 1 .. diffusion_steps
  float guidance = 3.0f;                  // classifier-free guidance scale; 1 = none
  DiffusionSampler sampler = DiffusionSampler::kDdim;
  float eta = 0.0f;  // DDIM only: 0 deterministic, 1 DDPM-like
  uint64_t seed = 1;
};

struct ImageModelOptions {
  std::string device = "cpu";
  int max_samples = 16;  // samples in flight at once
};

class ImageModel {
 public:
  virtual ~ImageModel() = default;
  virtual const DiffusionConfig& config() const = 0;
  virtual const std::string& device() const = 0;
  virtual int free_samples() const = 0;
  virtual int64_t parameter_count() const = 0;

  // RESOURCE_EXHAUSTED when max_samples are in flight; INVALID_ARGUMENT for a bad spec.
  virtual absl::StatusOr<int> StartSample(const ImageSampleSpec& spec) = 0;
  // One denoising step for each listed sample (distinct, not yet done) in one batched forward.
  virtual absl::Status Step(absl::Span<const int> samples) = 0;
  virtual int StepsDone(int sample) const = 0;
  virtual int TotalSteps(int sample) const = 0;
  // The current estimate of the clean image (x_0 prediction; the final image once every step is
  // done) as interleaved 8-bit pixels, height x width x channels, row-major.
  virtual absl::Status Pixels(int sample, std::vector<uint8_t>* pixels) = 0;
  virtual void ReleaseSample(int sample) = 0;
};

// Builds the model on options.device from float32 (or bf16/f16, converted) weights. Checks that
// every expected tensor is present with the right shape: INVALID_ARGUMENT naming the first
// missing, misshapen or unexpected one otherwise.
absl::StatusOr<std::unique_ptr<ImageModel>> CreateDiffusionModel(const DiffusionConfig& config,
                                                                 const TensorMap& weights,
                                                                 const ImageModelOptions& options);
// Fresh weights, deterministic in `seed` (the process-wide RNG is not touched).
absl::StatusOr<TensorMap> RandomDiffusionWeights(const DiffusionConfig& config, uint64_t seed);

}  // namespace tandem

#endif  // TANDEM_MODELS_IMAGE_MODEL_H_

// DiffusionModel: the LibTorch ImageModel that CreateDiffusionModel builds (the architecture, the
// sampling and the batch-invariance rules are described at the top of diffusion.cc), declared for
// the code that needs more than the ImageModel interface: a sample's float state (Latent), the
// network's raw output for given rows (RawOutput), and the sampler's update on its own
// (diffusion_model::SamplerUpdate).
//
// Internal to models/ and its tests: this header includes <torch/torch.h>; include it only from
// LibTorch translation units. Everyone else goes through models/image_model.h. Not thread-safe
// (as ImageModel: one owner calls it). Methods returning a Status catch torch's exceptions; the
// blocks WalkUNet calls and SamplerUpdate may throw c10::Error, which their callers catch at their
// torch boundary (torch_util::RunTorch).
#ifndef TANDEM_MODELS_DIFFUSION_DIFFUSION_MODEL_H_
#define TANDEM_MODELS_DIFFUSION_DIFFUSION_MODEL_H_

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "models/diffusion/diffusion_config.h"
#include "models/diffusion/diffusion_weights.h"
#include "models/formats/safetensors.h"
#include "models/image_model.h"

namespace tandem {
namespace diffusion_model {

// A caption's key / value projections for every attention block (diffusion.cc).
struct TextContext;
// The rows of one forward: their text contexts, stacked (diffusion.cc).
struct BatchContext;

// How the U-Net runs a batch (see "Batch invariance" in diffusion.cc).
enum class ForwardMode { kBatched, kPerRowConv, kPerRow };

struct UpdateResult {
  torch::Tensor x_prev;  // [C, H, W] float32: x at t_prev (the final image when t_prev = -1)
  torch::Tensor x0;      // [C, H, W] float32: the x_0 estimate, clipped to [-1, 1]
};

// One denoising update of one sample from timestep t to t_prev (the next timestep of its list, or
// -1 after the last), exactly as DiffusionModel::Step applies it after the U-Net, in float64:
// x: [C, H, W] x_t; out: [C, H, W] the (guidance-combined) eps or v prediction (v_prediction);
// alpha_bar: CosineAlphaBar(T). x_0 is estimated and clipped, eps re-derived from the clipped
// x_0, then the DDIM (with eta) or strided-DDPM step. Noise, when the step needs it, is drawn from
// gen on the CPU ([C, H, W] float32 standard normal) and moved to x's device. INVALID_ARGUMENT
// unless 0 <= t < T, -1 <= t_prev < t and x and out have one shape.
absl::StatusOr<UpdateResult> SamplerUpdate(const std::vector<double>& alpha_bar, bool v_prediction,
                                           DiffusionSampler sampler, double eta, int t, int t_prev,
                                           const torch::Tensor& x, const torch::Tensor& out,
                                           at::Generator& gen);

// One sample in flight.
struct Sample {
  bool active = false;
  ImageSampleSpec spec;
  std::vector<int> timesteps;  // descending
  int done = 0;                // steps taken
  at::Generator gen;           // CPU: x_T, then the per-step noise
  torch::Tensor x;             // [C, H, W] x at timesteps[done] (the final image when done)
  torch::Tensor x0;            // [C, H, W] latest clipped x_0 estimate; undefined before a step
  std::shared_ptr<const TextContext> cond, uncond;  // uncond only when guided
};

}  // namespace diffusion_model

class DiffusionModel final : public ImageModel {
 public:
  // What CreateDiffusionModel returns, with its concrete type. INVALID_ARGUMENT for a bad config,
  // options or weights (naming the first missing, misshapen or unexpected tensor).
  static absl::StatusOr<std::unique_ptr<DiffusionModel>> Create(const DiffusionConfig& config,
                                                                const TensorMap& weights,
                                                                const ImageModelOptions& options);

  const DiffusionConfig& config() const override { return config_; }
  const std::string& device() const override { return device_string_; }
  int free_samples() const override { return max_samples_ - active_; }
  int64_t parameter_count() const override { return parameter_count_; }

  absl::StatusOr<int> StartSample(const ImageSampleSpec& spec) override;
  absl::Status Step(absl::Span<const int> samples) override;
  int StepsDone(int sample) const override;
  int TotalSteps(int sample) const override;
  absl::Status Pixels(int sample, std::vector<uint8_t>* pixels) override;
  void ReleaseSample(int sample) override;

  // The float state of a started sample, CHW, copied to the CPU: x at the sample's current
  // timestep (the final image once every step is done) and, after a step, the clipped x_0
  // estimate (else empty). For what needs more than 8-bit pixels. INVALID_ARGUMENT for a sample
  // that is not started.
  absl::Status Latent(int sample, std::vector<float>* x, std::vector<float>* x0) const;

  // The network's raw output (eps or v per config().prediction; no guidance, no sampler update)
  // for R rows: x [R, C, H, W] float32 x_t (any device), t the R timesteps in [0, T), captions the
  // R token lists (without BOS; the model adds BOS, cuts and pads as for sampling). Returns
  // [R, C, H, W] on the model's device, computed under the model's forward mode. INVALID_ARGUMENT
  // for mismatched sizes, a timestep or a token out of range.
  absl::StatusOr<torch::Tensor> RawOutput(const torch::Tensor& x, const std::vector<int64_t>& t,
                                          const std::vector<std::vector<int32_t>>& captions) const;

  // The blocks diffusion_net::WalkUNet calls (batch-invariant kernels; t: [R] int64 timesteps on
  // the device). They may throw c10::Error.
  torch::Tensor Res(const diffusion_net::ResW& r, const torch::Tensor& x, const torch::Tensor& t,
                    const diffusion_model::BatchContext& ctx) const;
  torch::Tensor Attn(const diffusion_net::AttnW& a, const torch::Tensor& x,
                     const diffusion_model::BatchContext& ctx) const;
  torch::Tensor Conv(const diffusion_net::ConvW& c, const torch::Tensor& x) const;
  torch::Tensor Silu(torch::Tensor x) const {
    Activate(x, false);  // in place
    return x;
  }

 private:
  using TextContext = diffusion_model::TextContext;
  using BatchContext = diffusion_model::BatchContext;

  DiffusionModel(DiffusionConfig config, torch::Device device, int max_samples,
                 int64_t parameter_count);

  // Takes the loaded weights (on the device), folds and tabulates, encodes the unconditional
  // caption and settles the forward mode (`forced_mode`: TANDEM_DIFFUSION_FORWARD, or null).
  void Load(diffusion_net::Weights weights, const char* forced_mode);

  absl::Status CheckSample(int sample) const;
  absl::Status CheckTokens(absl::Span<const int32_t> ids, const char* what) const;

  // Text: ids [B, L] int64, key mask [B, 1, 1, L] additive -> states [B, L, D].
  torch::Tensor EncodeText(const torch::Tensor& ids, const torch::Tensor& mask) const;
  std::shared_ptr<const TextContext> EncodeCaption(absl::Span<const int32_t> caption) const;
  BatchContext Stack(const std::vector<const TextContext*>& rows) const;

  // The U-Net over R rows: x [R, C, H, W], t [R] int64 (device) -> [R, C, H, W].
  torch::Tensor UNet(const torch::Tensor& x, const torch::Tensor& t, const BatchContext& ctx) const;
  // UNet under the forward mode (padding, or row by row).
  torch::Tensor Forward(const torch::Tensor& x, const std::vector<int64_t>& t,
                        const std::vector<const TextContext*>& rows) const;
  torch::Tensor RowLinear(const diffusion_net::LinearW& l, const torch::Tensor& x) const;
  void Activate(torch::Tensor& x, bool gelu) const;
  // Whether a row gives the same bits alone and in batches of 3 and 5.
  bool Invariant() const;

  const DiffusionConfig config_;
  const torch::Device device_;
  const std::string device_string_;
  const int max_samples_;
  const int64_t parameter_count_;
  const std::vector<double> alpha_bar_;  // [T] float64, host: the sampler's coefficients
  diffusion_net::Weights w_;
  diffusion_model::ForwardMode mode_ = diffusion_model::ForwardMode::kBatched;
  bool row_elementwise_ = true;  // SiLU / GELU row by row (CPU)
  int64_t fixed_rows_ = 0;       // pad every batched forward to this many rows (0: no padding)
  std::shared_ptr<const TextContext> empty_caption_;
  std::vector<diffusion_model::Sample> samples_;
  int active_ = 0;
};

}  // namespace tandem

#endif  // TANDEM_MODELS_DIFFUSION_DIFFUSION_MODEL_H_

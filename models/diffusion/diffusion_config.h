// DiffusionConfig: the shape of a text-conditioned diffusion model (a small U-Net conditioned by
// cross-attention on the token states of a small transformer text encoder) and its noise
// schedule, and its JSON form (config.json with "kind": "image"). Torch-free.
#ifndef TANDEM_MODELS_DIFFUSION_DIFFUSION_CONFIG_H_
#define TANDEM_MODELS_DIFFUSION_DIFFUSION_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tandem {

struct DiffusionConfig {
  // Images.
  int image_size = 28;  // square, pixels
  int channels = 1;     // 1 (grey) or 3 (RGB)
  // U-Net: one level per width; level 0 is full resolution, each next level halves it.
  std::vector<int> unet_widths = {32, 64, 128};
  int res_blocks = 1;                    // residual blocks per level (encoder side)
  std::vector<int> attention_levels = {1, 2};  // levels with self- and cross-attention
  int attention_heads = 4;
  int groups = 8;  // group-norm groups; must divide every width
  // Text encoder (transformer over SentencePiece ids, learned positions, pre-norm).
  int vocab_size = 512;
  int text_dim = 128;
  int text_layers = 2;
  int text_heads = 4;
  int text_seq_len = 16;  // captions are cut / padded to this many tokens (BOS first)
  // Every residual block also adds a projection of the caption's pooled states (the mean over
  // its positions) to its channels, beside the timestep's: a global conditioning signal at every
  // resolution, which cross-attention alone learns far more slowly. New models have it; a
  // config.json without the field is a model from before (false).
  bool pooled_text = true;
  // Diffusion.
  int diffusion_steps = 1000;  // training timesteps T
  std::string prediction = "eps";  // "eps" (predict the noise) or "v"
  // Serving defaults.
  int default_steps = 50;
  float default_guidance = 3.0f;

  // Checks every invariant; INVALID_ARGUMENT naming the field otherwise.
  absl::Status Normalize();
  int64_t ParameterCount() const;  // exact, for the model built from this config

  std::string ToJson() const;  // {"kind":"image","architecture":"unet-cross-attention",...}
  static absl::StatusOr<DiffusionConfig> FromJson(const std::string& json);
};

}  // namespace tandem

#endif  // TANDEM_MODELS_DIFFUSION_DIFFUSION_CONFIG_H_

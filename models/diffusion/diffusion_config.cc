#include "models/diffusion/diffusion_config.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <system_error>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "models/diffusion/diffusion_schedule.h"
#include "models/formats/config_json.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

using config_json::CheckString;
using config_json::GetBool;
using config_json::GetFloat;
using config_json::GetInt;
using config_json::GetIntList;
using config_json::GetString;
using config_json::ParseObject;
using config_json::ShortestDouble;

// Upper bounds that catch corrupt or mistyped configs long before they turn into absurd
// allocations; real models sit far below them.
constexpr int kMaxImageSize = 4096;
constexpr int kMaxLevels = 8;
constexpr int kMaxWidth = 8192;
constexpr int kMaxResBlocks = 16;
constexpr int kMaxHeads = 1024;
constexpr int kMaxVocab = 1 << 22;
constexpr int kMaxTextDim = 16384;
constexpr int kMaxTextLayers = 256;
constexpr int kMaxTextSeqLen = 4096;
constexpr int kMaxDiffusionSteps = 100000;
constexpr float kMaxGuidance = 1000.0f;

absl::Status InRange(const char* field, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " (", value, ") must be in [", lo, ", ", hi, "]"));
  }
  return absl::OkStatus();
}

// Parameters of one residual block in -> out channels with a time vector of width e (see the
// layout in diffusion.cc): two GroupNorms, two 3x3 convs, the time projection, and a 1x1 skip
// conv when the channel count changes.
int64_t ResBlockParams(int64_t in, int64_t out, int64_t e) {
  int64_t n = 2 * in                   // norm1
              + 9 * in * out + out     // conv1
              + e * out + out          // time projection
              + 2 * out                // norm2
              + 9 * out * out + out;   // conv2
  if (in != out) n += in * out + out;  // skip
  return n;
}

// Parameters of one spatial transformer block of c channels over text states of width d:
// GroupNorm, 3 LayerNorms (8c); self-attention qkv (3c^2, no bias) and output (c^2 + c);
// cross-attention q (c^2), kv from the text (2cd), output (c^2 + c); MLP c -> 2c -> c
// (4c^2 + 3c); output projection (c^2 + c).
int64_t AttentionBlockParams(int64_t c, int64_t d) { return 11 * c * c + 2 * c * d + 14 * c; }

}  // namespace

absl::Status DiffusionConfig::Normalize() {
  if (auto s = InRange("image_size", image_size, 1, kMaxImageSize); !s.ok()) return s;
  if (channels != 1 && channels != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("channels (", channels, ") must be 1 (grey) or 3 (RGB)"));
  }
  if (unet_widths.empty() || static_cast<int>(unet_widths.size()) > kMaxLevels) {
    return absl::InvalidArgumentError(absl::StrCat("unet_widths must list 1 to ", kMaxLevels,
                                                   " widths (one per level), got ",
                                                   unet_widths.size()));
  }
  for (size_t i = 0; i < unet_widths.size(); ++i) {
    const std::string field = absl::StrCat("unet_widths[", i, "]");
    if (auto s = InRange(field.c_str(), unet_widths[i], 1, kMaxWidth); !s.ok()) return s;
  }
  const int levels = static_cast<int>(unet_widths.size());
  if (auto s = InRange("res_blocks", res_blocks, 1, kMaxResBlocks); !s.ok()) return s;
  if (auto s = InRange("attention_heads", attention_heads, 1, kMaxHeads); !s.ok()) return s;
  if (auto s = InRange("groups", groups, 1, kMaxWidth); !s.ok()) return s;
  if (auto s = InRange("vocab_size", vocab_size, 2, kMaxVocab); !s.ok()) return s;  // BOS is 1
  if (auto s = InRange("text_dim", text_dim, 1, kMaxTextDim); !s.ok()) return s;
  if (auto s = InRange("text_layers", text_layers, 1, kMaxTextLayers); !s.ok()) return s;
  if (auto s = InRange("text_heads", text_heads, 1, kMaxHeads); !s.ok()) return s;
  if (auto s = InRange("text_seq_len", text_seq_len, 2, kMaxTextSeqLen); !s.ok()) return s;
  if (auto s = InRange("diffusion_steps", diffusion_steps, 1, kMaxDiffusionSteps); !s.ok()) {
    return s;
  }

  // Levels with attention: each in range, sorted, no repeats.
  std::vector<int> sorted = attention_levels;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    if (sorted[i] < 0 || sorted[i] >= levels) {
      return absl::InvalidArgumentError(absl::StrCat("attention_levels: level ", sorted[i],
                                                     " is out of range [0, ", levels, ")"));
    }
    if (i > 0 && sorted[i] == sorted[i - 1]) {
      return absl::InvalidArgumentError(
          absl::StrCat("attention_levels: level ", sorted[i], " is listed twice"));
    }
  }
  attention_levels = sorted;

  for (size_t i = 0; i < unet_widths.size(); ++i) {
    if (unet_widths[i] % groups != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "groups (", groups, ") must divide unet_widths[", i, "] (", unet_widths[i], ")"));
    }
  }
  if (text_dim % groups != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("groups (", groups, ") must divide text_dim (", text_dim, ")"));
  }
  // Attention runs at the listed levels and always in the middle block (the last width).
  std::vector<int> attended = attention_levels;
  attended.push_back(levels - 1);
  for (int level : attended) {
    if (unet_widths[level] % attention_heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "attention_heads (", attention_heads, ") must divide unet_widths[", level, "] (",
          unet_widths[level], level == levels - 1 ? "), the width of the middle block" : ")"));
    }
  }
  if (text_dim % text_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("text_heads (", text_heads, ") must divide text_dim (", text_dim, ")"));
  }
  const int64_t factor = int64_t{1} << (levels - 1);
  if (image_size % factor != 0) {
    return absl::InvalidArgumentError(absl::StrCat("image_size (", image_size,
                                                   ") must be divisible by 2^(levels-1) = ", factor,
                                                   " for ", levels, " U-Net levels"));
  }
  if (prediction != "eps" && prediction != "v") {
    return absl::InvalidArgumentError(
        absl::StrCat("prediction (\"", prediction, "\") must be \"eps\" or \"v\""));
  }
  if (auto s = InRange("default_steps", default_steps, 1, diffusion_steps); !s.ok()) return s;
  if (!(std::isfinite(default_guidance) && default_guidance >= 1.0f &&
        default_guidance <= kMaxGuidance)) {
    return absl::InvalidArgumentError(absl::StrCat("default_guidance (", default_guidance,
                                                   ") must be in [1, ", kMaxGuidance, "]"));
  }
  return absl::OkStatus();
}

int64_t DiffusionConfig::ParameterCount() const {
  if (unet_widths.empty()) return 0;
  const int levels = static_cast<int>(unet_widths.size());
  const int64_t d = text_dim, w0 = unet_widths[0], e = 4 * w0, c = channels;
  auto attended = [&](int level) {
    return std::find(attention_levels.begin(), attention_levels.end(), level) !=
           attention_levels.end();
  };
  // Text encoder: embeddings, per layer 2 LayerNorms (4d), qkv (3d^2 + 3d), output (d^2 + d),
  // MLP d -> 4d -> d (8d^2 + 5d); final LayerNorm.
  int64_t total = int64_t{vocab_size} * d + int64_t{text_seq_len} * d +
                  int64_t{text_layers} * (12 * d * d + 13 * d) + 2 * d;
  // Time MLP (sinusoid of width w0 -> e -> e) and the input conv.
  total += e * w0 + e + e * e + e;
  total += 9 * c * w0 + w0;
  // Encoder; skips holds the channels of every saved activation.
  std::vector<int64_t> skips = {w0};
  int64_t ch = w0;
  for (int l = 0; l < levels; ++l) {
    for (int r = 0; r < res_blocks; ++r) {
      total += ResBlockParams(ch, unet_widths[l], e);
      ch = unet_widths[l];
      if (attended(l)) total += AttentionBlockParams(ch, d);
      skips.push_back(ch);
    }
    if (l + 1 < levels) {
      total += 9 * ch * ch + ch;  // stride-2 conv
      skips.push_back(ch);
    }
  }
  // Middle: res, attention, res.
  total += 2 * ResBlockParams(ch, ch, e) + AttentionBlockParams(ch, d);
  // Decoder: res_blocks + 1 blocks per level, each eating one skip; upsample conv between levels.
  for (int l = levels - 1; l >= 0; --l) {
    for (int r = 0; r <= res_blocks; ++r) {
      const int64_t skip = skips.back();
      skips.pop_back();
      total += ResBlockParams(ch + skip, unet_widths[l], e);
      ch = unet_widths[l];
      if (attended(l)) total += AttentionBlockParams(ch, d);
    }
    if (l > 0) total += 9 * ch * ch + ch;
  }
  // Output: GroupNorm, 3x3 conv to the image channels.
  total += 2 * w0 + 9 * w0 * c + c;
  return total;
}

std::string DiffusionConfig::ToJson() const {
  nlohmann::ordered_json j;
  j["kind"] = "image";
  j["architecture"] = "unet-cross-attention";
  j["image_size"] = image_size;
  j["channels"] = channels;
  j["unet_widths"] = unet_widths;
  j["res_blocks"] = res_blocks;
  j["attention_levels"] = attention_levels;
  j["attention_heads"] = attention_heads;
  j["groups"] = groups;
  j["vocab_size"] = vocab_size;
  j["text_dim"] = text_dim;
  j["text_layers"] = text_layers;
  j["text_heads"] = text_heads;
  j["text_seq_len"] = text_seq_len;
  j["diffusion_steps"] = diffusion_steps;
  j["prediction"] = prediction;
  j["default_steps"] = default_steps;
  j["default_guidance"] = ShortestDouble(default_guidance);
  return j.dump(2);
}

absl::StatusOr<DiffusionConfig> DiffusionConfig::FromJson(const std::string& json) {
  nlohmann::json j;
  if (auto s = ParseObject(json, &j); !s.ok()) return s;
  if (auto s = CheckString(j, "kind", "image"); !s.ok()) return s;
  if (auto s = CheckString(j, "architecture", "unet-cross-attention"); !s.ok()) return s;

  DiffusionConfig c;
  // The shape of the network is required; the serving defaults and the prediction target are not.
  for (auto [field, out, required] : {
           std::make_tuple("image_size", &c.image_size, true),
           std::make_tuple("channels", &c.channels, true),
           std::make_tuple("res_blocks", &c.res_blocks, true),
           std::make_tuple("attention_heads", &c.attention_heads, true),
           std::make_tuple("groups", &c.groups, true),
           std::make_tuple("vocab_size", &c.vocab_size, true),
           std::make_tuple("text_dim", &c.text_dim, true),
           std::make_tuple("text_layers", &c.text_layers, true),
           std::make_tuple("text_heads", &c.text_heads, true),
           std::make_tuple("text_seq_len", &c.text_seq_len, true),
           std::make_tuple("diffusion_steps", &c.diffusion_steps, true),
           std::make_tuple("default_steps", &c.default_steps, false),
       }) {
    if (auto s = GetInt(j, field, required, out); !s.ok()) return s;
  }
  if (auto s = GetIntList(j, "unet_widths", true, &c.unet_widths); !s.ok()) return s;
  if (auto s = GetIntList(j, "attention_levels", true, &c.attention_levels); !s.ok()) return s;
  if (auto s = GetString(j, "prediction", &c.prediction); !s.ok()) return s;
  if (auto s = GetFloat(j, "default_guidance", &c.default_guidance); !s.ok()) return s;
  if (j.find("default_steps") == j.end() && c.default_steps > c.diffusion_steps) {
    c.default_steps = c.diffusion_steps;  // the built-in default (50) suits T >= 50 only
  }
  if (auto s = c.Normalize(); !s.ok()) return s;
  return c;
}

// ---------------------------------------------------------------------------------------------
// Schedule (declared in diffusion_schedule.h).

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

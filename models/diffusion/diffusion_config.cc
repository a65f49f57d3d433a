#include "models/diffusion/diffusion_config.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "models/formats/config_json.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

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
// layout in diffusion.cc): two GroupNorms, two 3x3 convs, the time projection, the pooled text
// projection (text width d; 0 without pooled_text), and a 1x1 skip conv when the channel count
// changes.
int64_t ResBlockParams(int64_t in, int64_t out, int64_t e, int64_t d) {
  int64_t n = 2 * in                   // norm1
              + 9 * in * out + out     // conv1
              + e * out + out          // time projection
              + 2 * out                // norm2
              + 9 * out * out + out;   // conv2
  if (d > 0) n += d * out + out;       // pooled text projection
  if (in != out) n += in * out + out;  // skip
  return n;
}

// Parameters of one spatial transformer block of c channels over text states of width d:
// GroupNorm, 3 LayerNorms (8c); self-attention qkv (3c^2, no bias) and output (c^2 + c);
// cross-attention q (c^2), kv from the text (2cd), output (c^2 + c); MLP c -> 2c -> c
// (4c^2 + 3c); output projection (c^2 + c).
int64_t AttentionBlockParams(int64_t c, int64_t d) { return 11 * c * c + 2 * c * d + 14 * c; }

// config.json's fields, in the order ToJson writes them. The shape of the network is required;
// the serving defaults and the prediction target are not.
std::vector<config_json::Field> JsonFields(DiffusionConfig* c) {
  return {
      {"kind", "image"},
      {"architecture", "unet-cross-attention"},
      {"image_size", &c->image_size, true},
      {"channels", &c->channels, true},
      {"unet_widths", &c->unet_widths, true},
      {"res_blocks", &c->res_blocks, true},
      {"attention_levels", &c->attention_levels, true},
      {"attention_heads", &c->attention_heads, true},
      {"groups", &c->groups, true},
      {"vocab_size", &c->vocab_size, true},
      {"text_dim", &c->text_dim, true},
      {"text_layers", &c->text_layers, true},
      {"text_heads", &c->text_heads, true},
      {"text_seq_len", &c->text_seq_len, true},
      {"pooled_text", &c->pooled_text},
      {"diffusion_steps", &c->diffusion_steps, true},
      {"prediction", &c->prediction},
      {"default_steps", &c->default_steps},
      {"default_guidance", &c->default_guidance},
  };
}

// Every size within its bounds (the U-Net's level count and widths included).
absl::Status CheckSizes(const DiffusionConfig& c) {
  if (auto s = InRange("image_size", c.image_size, 1, kMaxImageSize); !s.ok()) return s;
  if (c.channels != 1 && c.channels != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("channels (", c.channels, ") must be 1 (grey) or 3 (RGB)"));
  }
  if (c.unet_widths.empty() || static_cast<int>(c.unet_widths.size()) > kMaxLevels) {
    return absl::InvalidArgumentError(absl::StrCat("unet_widths must list 1 to ", kMaxLevels,
                                                   " widths (one per level), got ",
                                                   c.unet_widths.size()));
  }
  for (size_t i = 0; i < c.unet_widths.size(); ++i) {
    const std::string field = absl::StrCat("unet_widths[", i, "]");
    if (auto s = InRange(field.c_str(), c.unet_widths[i], 1, kMaxWidth); !s.ok()) return s;
  }
  if (auto s = InRange("res_blocks", c.res_blocks, 1, kMaxResBlocks); !s.ok()) return s;
  if (auto s = InRange("attention_heads", c.attention_heads, 1, kMaxHeads); !s.ok()) return s;
  if (auto s = InRange("groups", c.groups, 1, kMaxWidth); !s.ok()) return s;
  if (auto s = InRange("vocab_size", c.vocab_size, 2, kMaxVocab); !s.ok()) return s;  // BOS is 1
  if (auto s = InRange("text_dim", c.text_dim, 1, kMaxTextDim); !s.ok()) return s;
  if (auto s = InRange("text_layers", c.text_layers, 1, kMaxTextLayers); !s.ok()) return s;
  if (auto s = InRange("text_heads", c.text_heads, 1, kMaxHeads); !s.ok()) return s;
  if (auto s = InRange("text_seq_len", c.text_seq_len, 2, kMaxTextSeqLen); !s.ok()) return s;
  return InRange("diffusion_steps", c.diffusion_steps, 1, kMaxDiffusionSteps);
}

// The levels with attention, sorted: each in range [0, levels), none repeated.
absl::Status SortAttentionLevels(int levels, std::vector<int>* attention_levels) {
  std::vector<int> sorted = *attention_levels;
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
  *attention_levels = std::move(sorted);
  return absl::OkStatus();
}

// Group norms and heads divide the widths they split; the image halves at every level.
absl::Status CheckDivisibility(const DiffusionConfig& c) {
  const int levels = static_cast<int>(c.unet_widths.size());
  for (size_t i = 0; i < c.unet_widths.size(); ++i) {
    if (c.unet_widths[i] % c.groups != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "groups (", c.groups, ") must divide unet_widths[", i, "] (", c.unet_widths[i], ")"));
    }
  }
  if (c.text_dim % c.groups != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("groups (", c.groups, ") must divide text_dim (", c.text_dim, ")"));
  }
  // Attention runs at the listed levels and always in the middle block (the last width).
  std::vector<int> attended = c.attention_levels;
  attended.push_back(levels - 1);
  for (int level : attended) {
    if (c.unet_widths[level] % c.attention_heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "attention_heads (", c.attention_heads, ") must divide unet_widths[", level, "] (",
          c.unet_widths[level], level == levels - 1 ? "), the width of the middle block" : ")"));
    }
  }
  if (c.text_dim % c.text_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("text_heads (", c.text_heads, ") must divide text_dim (", c.text_dim, ")"));
  }
  const int64_t factor = int64_t{1} << (levels - 1);
  if (c.image_size % factor != 0) {
    return absl::InvalidArgumentError(absl::StrCat("image_size (", c.image_size,
                                                   ") must be divisible by 2^(levels-1) = ", factor,
                                                   " for ", levels, " U-Net levels"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status DiffusionConfig::Normalize() {
  if (auto s = CheckSizes(*this); !s.ok()) return s;
  const int levels = static_cast<int>(unet_widths.size());
  if (auto s = SortAttentionLevels(levels, &attention_levels); !s.ok()) return s;
  if (auto s = CheckDivisibility(*this); !s.ok()) return s;
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
  const int64_t pooled = pooled_text ? d : 0;  // the res blocks' text projection's input width
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
      total += ResBlockParams(ch, unet_widths[l], e, pooled);
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
  total += 2 * ResBlockParams(ch, ch, e, pooled) + AttentionBlockParams(ch, d);
  // Decoder: res_blocks + 1 blocks per level, each eating one skip; upsample conv between levels.
  for (int l = levels - 1; l >= 0; --l) {
    for (int r = 0; r <= res_blocks; ++r) {
      const int64_t skip = skips.back();
      skips.pop_back();
      total += ResBlockParams(ch + skip, unet_widths[l], e, pooled);
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
  DiffusionConfig c = *this;
  return config_json::WriteFields(JsonFields(&c));
}

absl::StatusOr<DiffusionConfig> DiffusionConfig::FromJson(const std::string& json) {
  DiffusionConfig c;
  c.pooled_text = false;  // absent: a model from before pooled text conditioning
  nlohmann::json j;
  if (auto s = config_json::ReadFields(json, JsonFields(&c), &j); !s.ok()) return s;
  if (j.find("default_steps") == j.end() && c.default_steps > c.diffusion_steps) {
    c.default_steps = c.diffusion_steps;  // the built-in default (50) suits T >= 50 only
  }
  if (auto s = c.Normalize(); !s.ok()) return s;
  return c;
}

}  // namespace tandem

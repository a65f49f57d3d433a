#include "models/llama/llama_config.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "models/formats/config_json.h"

namespace tandem {
namespace {

// Upper bounds that catch corrupt or mistyped configs long before they turn into absurd
// allocations; real models sit orders of magnitude below them.
constexpr int kMaxDim = 65536;
constexpr int kMaxHiddenDim = 1 << 20;
constexpr int kMaxLayers = 1024;
constexpr int kMaxHeads = 65536;
constexpr int kMaxSeqLen = 1 << 20;
constexpr int kMaxVocab = 1 << 22;
constexpr int kHiddenMultipleOf = 32;

// llama2.c's SwiGLU width: int(2 * (4 * dim) / 3), rounded up to a multiple of 32.
int64_t DerivedHiddenDim(int64_t dim) {
  int64_t hidden = 2 * (4 * dim) / 3;
  return kHiddenMultipleOf * ((hidden + kHiddenMultipleOf - 1) / kHiddenMultipleOf);
}

int64_t EffectiveHiddenDim(const LlamaConfig& c) {
  return c.hidden_dim > 0 ? c.hidden_dim : DerivedHiddenDim(c.dim);
}

// Width of the K and V projections (n_kv_heads heads of head_dim); tolerant of an
// un-normalized config so the size helpers never divide by zero.
int64_t KvDim(const LlamaConfig& c) {
  if (c.n_heads <= 0) return 0;
  int64_t kv_heads = c.n_kv_heads > 0 ? c.n_kv_heads : c.n_heads;
  return static_cast<int64_t>(c.dim / c.n_heads) * kv_heads;
}

// Weights that are multiplied by an activation for every token in every layer.
int64_t MatmulParamsPerLayer(const LlamaConfig& c) {
  const int64_t dim = c.dim;
  const int64_t hidden = EffectiveHiddenDim(c);
  const int64_t kv_dim = KvDim(c);
  return dim * dim            // wq
         + 2 * dim * kv_dim   // wk, wv
         + dim * dim          // wo
         + 3 * dim * hidden;  // w1, w2, w3
}

absl::Status Positive(const char* field, int64_t value) {
  if (value <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(field, " (", value, ") must be positive"));
  }
  return absl::OkStatus();
}

absl::Status AtMost(const char* field, int64_t value, int64_t limit) {
  if (value > limit) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " (", value, ") must be at most ", limit));
  }
  return absl::OkStatus();
}

// config.json's fields, in the order ToJson writes them. The sizes are required; 0 for hidden_dim
// or n_kv_heads asks Normalize to derive them.
std::vector<config_json::Field> JsonFields(LlamaConfig* c) {
  return {
      {"architecture", "llama"},
      {"kind", "text"},
      {"dim", &c->dim, true},
      {"hidden_dim", &c->hidden_dim},
      {"n_layers", &c->n_layers, true},
      {"n_heads", &c->n_heads, true},
      {"n_kv_heads", &c->n_kv_heads},
      {"vocab_size", &c->vocab_size, true},
      {"seq_len", &c->seq_len, true},
      {"norm_eps", &c->norm_eps},
      {"rope_theta", &c->rope_theta},
      {"tie_embeddings", &c->tie_embeddings},
      {"bos_id", &c->bos_id},
      {"eos_id", &c->eos_id},
  };
}

}  // namespace

absl::Status LlamaConfig::Normalize() {
  if (hidden_dim < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("hidden_dim (", hidden_dim, ") must be positive, or 0 to derive it"));
  }
  // Sizes first (bounded), so derived values below cannot overflow.
  if (auto s = Positive("dim", dim); !s.ok()) return s;
  if (auto s = AtMost("dim", dim, kMaxDim); !s.ok()) return s;
  if (auto s = Positive("n_layers", n_layers); !s.ok()) return s;
  if (auto s = AtMost("n_layers", n_layers, kMaxLayers); !s.ok()) return s;
  if (auto s = Positive("n_heads", n_heads); !s.ok()) return s;
  if (auto s = AtMost("n_heads", n_heads, kMaxHeads); !s.ok()) return s;
  if (n_kv_heads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "n_kv_heads (", n_kv_heads, ") must be positive, or 0 for one per attention head"));
  }
  if (auto s = Positive("vocab_size", vocab_size); !s.ok()) return s;
  if (auto s = AtMost("vocab_size", vocab_size, kMaxVocab); !s.ok()) return s;
  if (auto s = Positive("seq_len", seq_len); !s.ok()) return s;
  if (auto s = AtMost("seq_len", seq_len, kMaxSeqLen); !s.ok()) return s;

  // Derived fields: 0 means "the conventional value".
  if (hidden_dim == 0) hidden_dim = static_cast<int>(DerivedHiddenDim(dim));
  if (n_kv_heads == 0) n_kv_heads = n_heads;  // plain multi-head attention
  if (auto s = AtMost("hidden_dim", hidden_dim, kMaxHiddenDim); !s.ok()) return s;

  if (dim % n_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("n_heads (", n_heads, ") must divide dim (", dim, ")"));
  }
  if (n_kv_heads > n_heads || n_heads % n_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("n_kv_heads (", n_kv_heads, ") must divide n_heads (", n_heads, ")"));
  }
  if (head_dim() % 2 != 0) {
    // Rotary embeddings rotate pairs of channels.
    return absl::InvalidArgumentError(absl::StrCat("head_dim (dim ", dim, " / n_heads ", n_heads,
                                                   " = ", head_dim(),
                                                   ") must be even for rotary embeddings"));
  }
  if (!(std::isfinite(norm_eps) && norm_eps > 0.0f && norm_eps < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("norm_eps (", norm_eps, ") must be in (0, 1)"));
  }
  if (!(std::isfinite(rope_theta) && rope_theta > 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rope_theta (", rope_theta, ") must be positive"));
  }
  if (bos_id < 0 || bos_id >= vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("bos_id (", bos_id, ") must be in [0, vocab_size ", vocab_size, ")"));
  }
  if (eos_id < 0 || eos_id >= vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("eos_id (", eos_id, ") must be in [0, vocab_size ", vocab_size, ")"));
  }
  return absl::OkStatus();
}

int64_t LlamaConfig::ParameterCount() const {
  const int64_t d = dim;
  const int64_t norms_per_layer = 2 * d;  // attention_norm, ffn_norm
  int64_t total = static_cast<int64_t>(vocab_size) * d;  // tok_embeddings
  total += static_cast<int64_t>(n_layers) * (norms_per_layer + MatmulParamsPerLayer(*this));
  total += d;  // final norm
  if (!tie_embeddings) total += static_cast<int64_t>(vocab_size) * d;  // output
  return total;
}

double LlamaConfig::FlopsPerToken(int pos) const {
  // The embedding lookup is a gather, not a matmul; the output projection is a matmul whether
  // or not its weights are tied to the embeddings.
  const double matmul_params = static_cast<double>(n_layers) * MatmulParamsPerLayer(*this) +
                               static_cast<double>(vocab_size) * dim;
  const int head = n_heads > 0 ? dim / n_heads : 0;
  // Per layer and head: q.k over pos+1 keys, then the weighted sum of pos+1 values.
  const double attention =
      2.0 * 2.0 * n_layers * n_heads * head * (static_cast<double>(pos) + 1.0);
  return 2.0 * matmul_params + attention;
}

std::string LlamaConfig::ToJson() const {
  LlamaConfig c = *this;
  return config_json::WriteFields(JsonFields(&c));
}

absl::StatusOr<LlamaConfig> LlamaConfig::FromJson(const std::string& json) {
  LlamaConfig c;
  if (auto s = config_json::ReadFields(json, JsonFields(&c)); !s.ok()) return s;
  if (auto s = c.Normalize(); !s.ok()) return s;
  return c;
}

}  // namespace tandem

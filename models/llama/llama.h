// Factories for the LibTorch Llama implementation of TextModel, and random initialisation.
// Torch-free header: callers never see torch types. (llama2.c checkpoints are read by
// models/formats/llama2c.h, under these names.)
//
// Weight names (safetensors, as in Meta's / llama2.c's model.py):
//   tok_embeddings.weight [vocab, dim]
//   layers.{i}.attention_norm.weight [dim]
//   layers.{i}.attention.wq.weight [n_heads*head_dim, dim]   (rows interleave rotary pairs)
//   layers.{i}.attention.wk.weight [n_kv_heads*head_dim, dim]
//   layers.{i}.attention.wv.weight [n_kv_heads*head_dim, dim]
//   layers.{i}.attention.wo.weight [dim, n_heads*head_dim]
//   layers.{i}.ffn_norm.weight [dim]
//   layers.{i}.feed_forward.w1.weight [hidden, dim]  (gate)
//   layers.{i}.feed_forward.w2.weight [dim, hidden]  (down)
//   layers.{i}.feed_forward.w3.weight [hidden, dim]  (up)
//   norm.weight [dim]
//   output.weight [vocab, dim]   (absent when tie_embeddings)
#ifndef TANDEM_MODELS_LLAMA_LLAMA_H_
#define TANDEM_MODELS_LLAMA_LLAMA_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/llama/llama_config.h"
#include "models/formats/safetensors.h"
#include "models/text_model.h"

namespace tandem {

struct TextModelOptions {
  std::string device = "cpu";  // "cpu" or "cuda:N"
  int max_slots = 32;          // concurrent sequences (KV caches are preallocated for all)
};

struct LlamaTensorShape {
  std::string name;
  std::vector<int64_t> shape;
};
// Every weight tensor `config` (normalized) needs, in a fixed order.
std::vector<LlamaTensorShape> LlamaTensorShapes(const LlamaConfig& config);

// Builds the model on options.device from float32 (or bf16/f16, converted) weights. Checks that
// every expected tensor is present with the right shape: INVALID_ARGUMENT naming it otherwise.
absl::StatusOr<std::unique_ptr<TextModel>> CreateLlamaModel(const LlamaConfig& config,
                                                            const TensorMap& weights,
                                                            const TextModelOptions& options);

// Fresh weights: normal(0, 0.02) matrices (output projections scaled by 1/sqrt(2*n_layers)),
// norms at 1. Deterministic in `seed`.
absl::StatusOr<TensorMap> RandomLlamaWeights(const LlamaConfig& config, uint64_t seed);

}  // namespace tandem

#endif  // TANDEM_MODELS_LLAMA_LLAMA_H_

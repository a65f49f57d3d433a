// LlamaConfig: the shape of a Llama-style decoder LLM, and its JSON form (the model directory's
// config.json). Torch-free.
#ifndef TANDEM_MODELS_LLAMA_LLAMA_CONFIG_H_
#define TANDEM_MODELS_LLAMA_LLAMA_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tandem {

struct LlamaConfig {
  int dim = 0;         // model width
  int hidden_dim = 0;  // SwiGLU inner width; 0 in JSON means "derive from dim" (see Normalize)
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;  // grouped-query attention: n_heads % n_kv_heads == 0
  int vocab_size = 0;
  int seq_len = 0;     // context length
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  bool tie_embeddings = false;  // output projection shares tok_embeddings.weight
  int bos_id = 1;
  int eos_id = 2;

  int head_dim() const { return dim / n_heads; }

  // Fills derived fields (hidden_dim from llama2.c's rule: 4*dim*2/3 rounded up to 32) and
  // checks every invariant; INVALID_ARGUMENT naming the field otherwise.
  absl::Status Normalize();
  // Weights only (excluding the KV cache).
  int64_t ParameterCount() const;
  // Matmul FLOPs for one token at context position `pos` (2 per multiply-add): the weight
  // matmuls plus attention over pos+1 cached positions.
  double FlopsPerToken(int pos) const;

  std::string ToJson() const;  // {"architecture":"llama", ...}
  static absl::StatusOr<LlamaConfig> FromJson(const std::string& json);
};

}  // namespace tandem

#endif  // TANDEM_MODELS_LLAMA_LLAMA_CONFIG_H_

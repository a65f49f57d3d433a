// The shapes of the tiny models the tests build: a Llama by its sizes, and a small
// text-conditioned U-Net that tests adjust. Plain configs (torch-free); the model directories
// built from them are in tests/testing/test_model.h.
#ifndef TANDEM_TESTS_TESTING_BASE_TINY_CONFIGS_H_
#define TANDEM_TESTS_TESTING_BASE_TINY_CONFIGS_H_

#include <cstdint>

#include "models/diffusion/diffusion_config.h"
#include "models/llama/llama_config.h"

namespace tandem::testing {

// A tiny Llama: its sizes, and the seed of its weights (where a test draws them).
struct TinyModelSpec {
  int dim = 32;
  int layers = 2;
  int heads = 4;
  int kv_heads = 2;
  int seq_len = 128;
  int vocab = 320;
  uint64_t seed = 7;
};

// `spec`'s sizes as a LlamaConfig, not normalized (hidden_dim 0: Normalize derives it), the
// other fields at their defaults.
LlamaConfig LlamaShape(const TinyModelSpec& spec);

// A tiny diffusion model, not normalized: 8x8 RGB images; a U-Net of two levels, 8 and 16
// channels, one res block each, attention at level 1 (and in the middle) with 2 heads, 4
// groups; a one-layer text encoder of width 16 and 2 heads over 8 tokens of a 64-token
// vocabulary; T = 100; the other fields at their defaults.
DiffusionConfig TinyDiffusionShape();

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_BASE_TINY_CONFIGS_H_

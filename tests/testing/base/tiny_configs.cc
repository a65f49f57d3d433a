#include "tests/testing/base/tiny_configs.h"

namespace tandem::testing {

LlamaConfig LlamaShape(const TinyModelSpec& spec) {
  LlamaConfig c;
  c.dim = spec.dim;
  c.n_layers = spec.layers;
  c.n_heads = spec.heads;
  c.n_kv_heads = spec.kv_heads;
  c.seq_len = spec.seq_len;
  c.vocab_size = spec.vocab;
  return c;
}

DiffusionConfig TinyDiffusionShape() {
  DiffusionConfig c;
  c.image_size = 8;
  c.channels = 3;
  c.unet_widths = {8, 16};
  c.res_blocks = 1;
  c.attention_levels = {1};
  c.attention_heads = 2;
  c.groups = 4;
  c.vocab_size = 64;
  c.text_dim = 16;
  c.text_layers = 1;
  c.text_heads = 2;
  c.text_seq_len = 8;
  c.diffusion_steps = 100;
  return c;
}

}  // namespace tandem::testing

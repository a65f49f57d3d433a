// A plain C++ reference of llama2.c's run.c for the tests: its forward pass (float32, one token
// at a time, on a legacy version 0 checkpoint read on its own), its tokenizer (encode with the C
// library's qsort and bsearch, as run.c calls them; decode; safe_printf) and its generate loop
// with greedy sampling. Written from run.c's code step by step and kept naive on purpose: the
// tests compare tandem's implementations (models/formats/llama2c, models/text/llama2c_tokenizer,
// the LibTorch model) with it. Torch-free; not thread-safe.
#ifndef TANDEM_TESTS_TESTING_BASE_RUN_C_REFERENCE_H_
#define TANDEM_TESTS_TESTING_BASE_RUN_C_REFERENCE_H_

#include <cstdint>
#include <string>
#include <vector>

namespace tandem::testing {

struct RunCConfig {
  int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

// run.c's Transformer: build_transformer, forward.
class RunCTransformer {
 public:
  explicit RunCTransformer(const std::string& checkpoint_path);
  const RunCConfig& config() const { return p_; }
  // The logits (vocab_size) of `token` at `pos`; the KV cache keeps every earlier position.
  const std::vector<float>& Forward(int token, int pos);

 private:
  RunCConfig p_;
  std::vector<float> data_;
  float *token_embedding_table_, *rms_att_weight_, *wq_, *wk_, *wv_, *wo_, *rms_ffn_weight_, *w1_,
      *w2_, *w3_, *rms_final_weight_, *wcls_;
  std::vector<float> x_, xb_, xb2_, hb_, hb2_, q_, key_cache_, value_cache_, att_, logits_;
};

// run.c's Tokenizer: build_tokenizer (vocab_size pieces of a tokenizer.bin), encode, decode.
class RunCTokenizer {
 public:
  RunCTokenizer(const std::string& tokenizer_bin_bytes, int vocab_size);
  ~RunCTokenizer();
  RunCTokenizer(const RunCTokenizer&) = delete;
  RunCTokenizer& operator=(const RunCTokenizer&) = delete;

  // encode(text, bos, eos).
  std::vector<int> Encode(const std::string& text, bool bos, bool eos);
  // decode(prev_token, token): the piece to print.
  const char* Decode(int prev_token, int token);
  // What safe_printf(piece) prints.
  static std::string SafePrintf(const char* piece);

 private:
  struct TokenIndex {
    char* str;
    int id;
  };
  int vocab_size_;
  unsigned int max_token_length_ = 0;
  std::vector<char*> vocab_;
  std::vector<float> vocab_scores_;
  std::vector<TokenIndex> sorted_vocab_;
  unsigned char byte_pieces_[512];
};

struct RunCOutput {
  std::string text;         // what generate() prints to stdout, its final "\n" included
  std::string pieces;       // the pieces decode() returned, unfiltered by safe_printf
  std::vector<int> tokens;  // the prompt's tokens (BOS first) and then the generated ones
};

// run.c's generate() with temperature 0 (sample_argmax) for `steps` positions.
RunCOutput RunCGenerate(RunCTransformer& transformer, RunCTokenizer& tokenizer,
                        const std::string& prompt, int steps);

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_BASE_RUN_C_REFERENCE_H_

// Shared by the end-to-end tests: a tiny, seeded, randomly initialised text model written to a
// temporary model directory (real tokenizer training, real safetensors), and a corpus for it.
#ifndef TANDEM_TESTS_TESTING_TEST_MODEL_H_
#define TANDEM_TESTS_TESTING_TEST_MODEL_H_

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "models/image_model.h"
#include "models/llama/llama.h"
#include "models/model_dir.h"
#include "models/text/tokenizer.h"

namespace tandem::testing {

// A few thousand words of deterministic English-like text.
inline std::string WriteCorpus(const std::string& path) {
  static const char* kWords[] = {
      "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "from",
      "home", "while", "sun", "was", "shining", "bright", "over", "hills", "river", "flowed",
      "quietly", "into", "sea", "where", "fish", "swam", "all", "day", "long", "night",
      "stars", "moon", "café", "naïve", "über", "日本", "🙂", "42", "1999", "(", ")", ",", "."};
  constexpr int kN = sizeof(kWords) / sizeof(kWords[0]);
  std::ofstream out(path);
  uint64_t x = 88172645463325252ull;
  for (int line = 0; line < 600; ++line) {
    int len = 5 + line % 11;
    for (int w = 0; w < len; ++w) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      out << (w ? " " : "") << kWords[x % kN];
    }
    out << "\n";
  }
  return path;
}

struct TinyModelSpec {
  int dim = 32;
  int layers = 2;
  int heads = 4;
  int kv_heads = 2;
  int seq_len = 128;
  int vocab = 320;
  uint64_t seed = 7;
};

// Writes a model directory `dir` (created) and returns its path.
inline std::string WriteTinyModel(const std::string& dir, const TinyModelSpec& spec = {}) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  const std::string corpus = WriteCorpus(dir + "/../corpus-" + fs::path(dir).filename().string());
  TokenizerTrainOptions topts;
  topts.vocab_size = spec.vocab;
  const std::string tok = dir + "/../tok-" + fs::path(dir).filename().string() + ".model";
  absl::Status s = Tokenizer::Train(corpus, tok, topts);
  EXPECT_TRUE(s.ok()) << s;
  LlamaConfig cfg;
  cfg.dim = spec.dim;
  cfg.n_layers = spec.layers;
  cfg.n_heads = spec.heads;
  cfg.n_kv_heads = spec.kv_heads;
  cfg.seq_len = spec.seq_len;
  cfg.vocab_size = spec.vocab;
  s = cfg.Normalize();
  EXPECT_TRUE(s.ok()) << s;
  auto weights = RandomLlamaWeights(cfg, spec.seed);
  EXPECT_TRUE(weights.ok()) << weights.status();
  SafetensorsFile file;
  file.tensors = *std::move(weights);
  auto tok_bytes = ReadFile(tok);
  EXPECT_TRUE(tok_bytes.ok());
  ModelProvenance prov;
  prov.source = "test";
  s = WriteTextModelDir(dir, cfg, file, *tok_bytes, prov);
  EXPECT_TRUE(s.ok()) << s;
  return dir;
}

// A captions corpus and a tiny seeded diffusion model (16x16 grey) in `dir`.
inline std::string WriteTinyImageModel(const std::string& dir, uint64_t seed = 11) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  const std::string corpus = dir + "/../captions-" + fs::path(dir).filename().string();
  {
    std::ofstream out(corpus);
    const char* things[] = {"sneaker", "ankle boot", "bag", "dress", "coat", "shirt",
                            "sandal", "pullover", "trousers", "t-shirt"};
    const char* forms[] = {"a photo of a %s", "a %s", "a picture of a %s",
                           "a black and white photo of a %s", "a small %s", "a dark %s"};
    for (const char* f : forms) {
      for (const char* t : things) {
        char line[128];
        std::snprintf(line, sizeof(line), f, t);
        out << line << "\n";
      }
    }
  }
  TokenizerTrainOptions topts;
  topts.vocab_size = 400;
  topts.hard_vocab_limit = false;
  const std::string tok = dir + "/../tok-" + fs::path(dir).filename().string() + ".model";
  absl::Status s = Tokenizer::Train(corpus, tok, topts);
  EXPECT_TRUE(s.ok()) << s;
  auto loaded = Tokenizer::Load(tok);
  EXPECT_TRUE(loaded.ok());
  DiffusionConfig cfg;
  cfg.image_size = 16;
  cfg.channels = 1;
  cfg.unet_widths = {8, 16};
  cfg.attention_levels = {1};
  cfg.attention_heads = 2;
  cfg.groups = 4;
  cfg.vocab_size = (*loaded)->vocab_size();
  cfg.text_dim = 16;
  cfg.text_layers = 1;
  cfg.text_heads = 2;
  cfg.text_seq_len = 8;
  cfg.diffusion_steps = 100;
  cfg.default_steps = 10;
  s = cfg.Normalize();
  EXPECT_TRUE(s.ok()) << s;
  auto weights = RandomDiffusionWeights(cfg, seed);
  EXPECT_TRUE(weights.ok()) << weights.status();
  SafetensorsFile file;
  file.tensors = *std::move(weights);
  auto tok_bytes = ReadFile(tok);
  EXPECT_TRUE(tok_bytes.ok());
  ModelProvenance prov;
  prov.source = "test";
  s = WriteImageModelDir(dir, cfg, file, *tok_bytes, prov);
  EXPECT_TRUE(s.ok()) << s;
  return dir;
}

inline std::string MakeTempDir(const std::string& prefix) {
  std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  char* made = ::mkdtemp(tmpl.data());
  EXPECT_NE(made, nullptr);
  return tmpl;
}

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_TEST_MODEL_H_

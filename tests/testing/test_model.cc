#include "tests/testing/test_model.h"

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "models/formats/safetensors.h"
#include "models/image_model.h"
#include "models/llama/llama.h"
#include "models/model_dir.h"
#include "models/text/sentencepiece_tokenizer.h"

namespace tandem::testing {
namespace {

namespace fs = std::filesystem;

// A file beside the model directory `dir`: <dir>/../<what>-<dir's name><ext>.
std::string Beside(const std::string& dir, const std::string& what, const std::string& ext = "") {
  return absl::StrCat(dir, "/../", what, "-", fs::path(dir).filename().string(), ext);
}

// Trains a tokenizer on `corpus` beside `dir`; returns its path.
std::string TrainTokenizer(const std::string& dir, const std::string& corpus,
                           const TokenizerTrainOptions& options) {
  const std::string tok = Beside(dir, "tok", ".model");
  absl::Status s = SentencePieceTokenizer::Train(corpus, tok, options);
  EXPECT_TRUE(s.ok()) << s;
  return tok;
}

// Writes the model directory around `weights` and the tokenizer at `tok` with
// write(dir, file, tokenizer bytes, provenance).
using WriteDir = std::function<absl::Status(const std::string&, const SafetensorsFile&,
                                            const TokenizerFile&, const ModelProvenance&)>;
void WriteModelDir(const std::string& dir, absl::StatusOr<TensorMap> weights,
                   const std::string& tok, const WriteDir& write) {
  EXPECT_TRUE(weights.ok()) << weights.status();
  SafetensorsFile file;
  if (weights.ok()) file.tensors = *std::move(weights);
  absl::StatusOr<std::string> tok_bytes = ReadFile(tok);
  EXPECT_TRUE(tok_bytes.ok()) << tok_bytes.status();
  ModelProvenance prov;
  prov.source = "test";
  const absl::Status s =
      write(dir, file, TokenizerFile{TokenizerKind::kSentencePiece, tok_bytes.value_or("")}, prov);
  EXPECT_TRUE(s.ok()) << s;
}

// Captions of ten clothes in six phrasings, one a line.
void WriteCaptions(const std::string& path) {
  std::ofstream out(path);
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

// TinyDiffusionShape as 16x16 grey images, 10 sampling steps by default, for a tokenizer of
// `vocab` pieces.
DiffusionConfig TinyImageConfig(int vocab) {
  DiffusionConfig cfg = TinyDiffusionShape();
  cfg.image_size = 16;
  cfg.channels = 1;
  cfg.vocab_size = vocab;
  cfg.default_steps = 10;
  const absl::Status s = cfg.Normalize();
  EXPECT_TRUE(s.ok()) << s;
  return cfg;
}

}  // namespace

std::string WriteCorpus(const std::string& path) {
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

std::string WriteTinyModel(const std::string& dir, const TinyModelSpec& spec) {
  fs::create_directories(dir);
  TokenizerTrainOptions topts;
  topts.vocab_size = spec.vocab;
  const std::string tok = TrainTokenizer(dir, WriteCorpus(Beside(dir, "corpus")), topts);
  LlamaConfig cfg = LlamaShape(spec);
  const absl::Status normalized = cfg.Normalize();
  EXPECT_TRUE(normalized.ok()) << normalized;
  WriteModelDir(
      dir, RandomLlamaWeights(cfg, spec.seed), tok,
      [&](const std::string& d, const SafetensorsFile& file, const TokenizerFile& tokenizer,
          const ModelProvenance& prov) {
        return WriteTextModelDir(d, cfg, file, tokenizer, prov);
      });
  return dir;
}

std::string WriteTinyImageModel(const std::string& dir, uint64_t seed) {
  fs::create_directories(dir);
  const std::string corpus = Beside(dir, "captions");
  WriteCaptions(corpus);
  TokenizerTrainOptions topts;
  topts.vocab_size = 400;
  topts.hard_vocab_limit = false;
  const std::string tok = TrainTokenizer(dir, corpus, topts);
  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = SentencePieceTokenizer::Load(tok);
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  const DiffusionConfig cfg = TinyImageConfig(loaded.ok() ? (*loaded)->vocab_size() : 0);
  WriteModelDir(
      dir, RandomDiffusionWeights(cfg, seed), tok,
      [&](const std::string& d, const SafetensorsFile& file, const TokenizerFile& tokenizer,
          const ModelProvenance& prov) {
        return WriteImageModelDir(d, cfg, file, tokenizer, prov);
      });
  return dir;
}

}  // namespace tandem::testing

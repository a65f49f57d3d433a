// tandem-init: creates a servable, randomly initialised text model directory whose SentencePiece
// tokenizer is trained on a corpus, so a fresh machine can serve (and train) before any training
// job has run.
//   tandem-init --corpus=FILE --out=DIR [--vocab_size --dim --layers --heads --kv_heads --seq_len
//               --seed]
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "models/device.h"
#include "models/llama.h"
#include "models/model_dir.h"
#include "models/tokenizer.h"

ABSL_FLAG(std::string, corpus, "", "UTF-8 text file to train the tokenizer on (required)");
ABSL_FLAG(std::string, out, "", "Model directory to create (required)");
ABSL_FLAG(int, vocab_size, 512, "Tokenizer and model vocabulary size");
ABSL_FLAG(int, dim, 128, "Model width");
ABSL_FLAG(int, hidden_dim, 0, "SwiGLU width (0: derived from dim)");
ABSL_FLAG(int, layers, 4, "Transformer layers");
ABSL_FLAG(int, heads, 4, "Attention heads");
ABSL_FLAG(int, kv_heads, 0, "Key/value heads (0: same as heads)");
ABSL_FLAG(int, seq_len, 256, "Context length");
ABSL_FLAG(bool, tie_embeddings, false, "Share the input embedding and output projection");
ABSL_FLAG(std::string, tokenizer_type, "bpe", "SentencePiece model type: bpe or unigram");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the weights and the tokenizer's sampling");
ABSL_FLAG(bool, force, false, "Overwrite an existing model directory");

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "tandem-init: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "tandem-init --corpus=FILE --out=DIR [--vocab_size --dim --layers --heads --kv_heads "
      "--seq_len --seed]");
  absl::ParseCommandLine(argc, argv);
  const std::string corpus = absl::GetFlag(FLAGS_corpus);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (corpus.empty() || out.empty()) return Fail("--corpus and --out are required");
  namespace fs = std::filesystem;
  if (!fs::is_regular_file(corpus)) return Fail(absl::StrCat("corpus not found: ", corpus));
  if (fs::exists(fs::path(out) / tandem::kConfigFile) && !absl::GetFlag(FLAGS_force)) {
    return Fail(absl::StrCat(out, " already holds a model; pass --force to replace it"));
  }

  tandem::LlamaConfig config;
  config.vocab_size = absl::GetFlag(FLAGS_vocab_size);
  config.dim = absl::GetFlag(FLAGS_dim);
  config.hidden_dim = absl::GetFlag(FLAGS_hidden_dim);
  config.n_layers = absl::GetFlag(FLAGS_layers);
  config.n_heads = absl::GetFlag(FLAGS_heads);
  config.n_kv_heads = absl::GetFlag(FLAGS_kv_heads) > 0 ? absl::GetFlag(FLAGS_kv_heads)
                                                        : config.n_heads;
  config.seq_len = absl::GetFlag(FLAGS_seq_len);
  config.tie_embeddings = absl::GetFlag(FLAGS_tie_embeddings);
  if (absl::Status s = config.Normalize(); !s.ok()) return Fail(std::string(s.message()));

  tandem::SetComputeThreads(0);
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) return Fail(absl::StrCat("cannot create ", out, ": ", ec.message()));

  tandem::TokenizerTrainOptions topts;
  topts.vocab_size = config.vocab_size;
  topts.model_type = absl::GetFlag(FLAGS_tokenizer_type);
  topts.seed = absl::GetFlag(FLAGS_seed);
  const std::string tok_tmp = absl::StrCat(out, "/.tokenizer.", ::getpid(), ".model");
  std::fprintf(stderr, "tandem-init: training a %d-piece %s tokenizer on %s\n",
               config.vocab_size, topts.model_type.c_str(), corpus.c_str());
  if (absl::Status s = tandem::Tokenizer::Train(corpus, tok_tmp, topts); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  absl::StatusOr<std::string> tok_bytes = tandem::ReadFile(tok_tmp);
  fs::remove(tok_tmp, ec);
  if (!tok_bytes.ok()) return Fail(std::string(tok_bytes.status().message()));

  absl::StatusOr<tandem::TensorMap> weights =
      tandem::RandomLlamaWeights(config, absl::GetFlag(FLAGS_seed));
  if (!weights.ok()) return Fail(std::string(weights.status().message()));
  tandem::SafetensorsFile file;
  file.tensors = *std::move(weights);
  file.metadata["format"] = "pt";
  file.metadata["tandem.config"] = config.ToJson();
  tandem::ModelProvenance prov;
  prov.source = absl::StrCat("tandem-init (random, seed ", absl::GetFlag(FLAGS_seed), ")");
  if (absl::Status s = tandem::WriteTextModelDir(out, config, file, *tok_bytes, prov); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  std::fprintf(stderr, "tandem-init: wrote %s (%lld parameters, context %d)\n", out.c_str(),
               static_cast<long long>(config.ParameterCount()), config.seq_len);
  return 0;
}

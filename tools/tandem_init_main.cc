// tandem-init: creates a servable, randomly initialised model directory whose SentencePiece
// tokenizer is trained on a corpus, so a fresh machine can serve (and train) before any training
// job has run.
//   tandem-init --corpus=FILE --out=DIR [--vocab_size --dim --layers --heads --kv_heads --seq_len
//               --seed]                                   a Llama-style LLM
//   tandem-init --kind=image --corpus=CAPTIONS --out=DIR [--image_size --channels --widths ...]
//                                                         a text-conditioned diffusion model
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "models/image_model.h"
#include "models/llama/llama.h"
#include "models/model_dir.h"
#include "models/text/sentencepiece_tokenizer.h"
#include "models/torch/device.h"
#include "trainer/data/image_data.h"

ABSL_FLAG(std::string, corpus, "",
          "UTF-8 text file to train the tokenizer on (required for text; for image models the\n"
          "default is every Fashion-MNIST caption phrasing)");
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
ABSL_FLAG(std::string, kind, "text", "text (LLM) or image (diffusion)");
ABSL_FLAG(int, image_size, 28, "image: side in pixels");
ABSL_FLAG(int, channels, 1, "image: 1 (grey) or 3 (RGB)");
ABSL_FLAG(std::string, widths, "32,64,128", "image: U-Net channels per level");
ABSL_FLAG(std::string, attention_levels, "1,2", "image: U-Net levels with attention");
ABSL_FLAG(int, res_blocks, 1, "image: residual blocks per level");
ABSL_FLAG(int, text_dim, 128, "image: text encoder width");
ABSL_FLAG(int, text_layers, 2, "image: text encoder layers");
ABSL_FLAG(int, text_seq_len, 16, "image: caption tokens at most");
ABSL_FLAG(int, diffusion_steps, 1000, "image: training timesteps T");
ABSL_FLAG(std::string, prediction, "eps", "image: eps or v");
ABSL_FLAG(bool, force, false, "Overwrite an existing model directory");

namespace {

namespace fs = std::filesystem;

int Fail(const std::string& message) {
  std::fprintf(stderr, "tandem-init: %s\n", message.c_str());
  return 1;
}

// The flags' consistency, before anything is written.
absl::Status CheckFlags(const std::string& kind, const std::string& corpus,
                        const std::string& out) {
  if (out.empty()) return absl::InvalidArgumentError("--out is required");
  if (corpus.empty() && kind != "image") {
    return absl::InvalidArgumentError("--corpus is required for a text model");
  }
  if (!corpus.empty() && !fs::is_regular_file(corpus)) {
    return absl::NotFoundError(absl::StrCat("corpus not found: ", corpus));
  }
  if (fs::exists(fs::path(out) / tandem::kConfigFile) && !absl::GetFlag(FLAGS_force)) {
    return absl::AlreadyExistsError(
        absl::StrCat(out, " already holds a model; pass --force to replace it"));
  }
  if (kind != "text" && kind != "image") {
    return absl::InvalidArgumentError("--kind must be text or image");
  }
  return absl::OkStatus();
}

// The trained tokenizer: its SentencePiece model and vocabulary size.
struct TrainedTokenizer {
  tandem::TokenizerFile file;
  int vocab_size = 0;
};

// Trains the tokenizer on `corpus` (empty: every Fashion-MNIST caption phrasing, written to a
// temporary file in `out`). Temporary files are removed whatever happens.
absl::StatusOr<TrainedTokenizer> TrainTokenizer(const std::string& out, const std::string& kind,
                                             std::string corpus) {
  std::error_code ec;
  std::string captions_tmp;
  if (corpus.empty()) {
    captions_tmp = absl::StrCat(out, "/.captions.", ::getpid(), ".txt");
    if (absl::Status s =
            tandem::WriteFileAtomically(captions_tmp, tandem::FashionMnistCaptionCorpus());
        !s.ok()) {
      return s;
    }
    corpus = captions_tmp;
  }
  tandem::TokenizerTrainOptions topts;
  topts.vocab_size = absl::GetFlag(FLAGS_vocab_size);
  topts.model_type = absl::GetFlag(FLAGS_tokenizer_type);
  topts.seed = absl::GetFlag(FLAGS_seed);
  // Captions are a small corpus: let it use fewer pieces than asked rather than fail.
  topts.hard_vocab_limit = kind == "text";
  const std::string tok_tmp = absl::StrCat(out, "/.tokenizer.", ::getpid(), ".model");
  std::fprintf(stderr, "tandem-init: training a %d-piece %s tokenizer on %s\n",
               topts.vocab_size, topts.model_type.c_str(), corpus.c_str());
  const absl::Status trained = tandem::SentencePieceTokenizer::Train(corpus, tok_tmp, topts);
  if (!captions_tmp.empty()) fs::remove(captions_tmp, ec);
  if (!trained.ok()) {
    fs::remove(tok_tmp, ec);
    return trained;
  }
  absl::StatusOr<std::unique_ptr<tandem::SentencePieceTokenizer>> tok =
      tandem::SentencePieceTokenizer::Load(tok_tmp);
  fs::remove(tok_tmp, ec);
  if (!tok.ok()) return tok.status();
  return TrainedTokenizer{(*tok)->File(), (*tok)->vocab_size()};
}

absl::StatusOr<tandem::LlamaConfig> LlamaConfigFromFlags(int vocab) {
  tandem::LlamaConfig config;
  config.vocab_size = vocab;
  config.dim = absl::GetFlag(FLAGS_dim);
  config.hidden_dim = absl::GetFlag(FLAGS_hidden_dim);
  config.n_layers = absl::GetFlag(FLAGS_layers);
  config.n_heads = absl::GetFlag(FLAGS_heads);
  config.n_kv_heads =
      absl::GetFlag(FLAGS_kv_heads) > 0 ? absl::GetFlag(FLAGS_kv_heads) : config.n_heads;
  config.seq_len = absl::GetFlag(FLAGS_seq_len);
  config.tie_embeddings = absl::GetFlag(FLAGS_tie_embeddings);
  if (absl::Status s = config.Normalize(); !s.ok()) return s;
  return config;
}

// Comma-separated integers: "32,64,128".
absl::StatusOr<std::vector<int>> IntList(const char* flag, const std::string& csv) {
  std::vector<int> out;
  for (absl::string_view part : absl::StrSplit(csv, ',', absl::SkipEmpty())) {
    int v = 0;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, " takes comma-separated integers, got \"", csv, "\""));
    }
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<tandem::DiffusionConfig> DiffusionConfigFromFlags(int vocab) {
  tandem::DiffusionConfig config;
  config.vocab_size = vocab;
  config.image_size = absl::GetFlag(FLAGS_image_size);
  config.channels = absl::GetFlag(FLAGS_channels);
  absl::StatusOr<std::vector<int>> widths = IntList("widths", absl::GetFlag(FLAGS_widths));
  if (!widths.ok()) return widths.status();
  config.unet_widths = *std::move(widths);
  absl::StatusOr<std::vector<int>> levels =
      IntList("attention_levels", absl::GetFlag(FLAGS_attention_levels));
  if (!levels.ok()) return levels.status();
  config.attention_levels = *std::move(levels);
  config.res_blocks = absl::GetFlag(FLAGS_res_blocks);
  config.text_dim = absl::GetFlag(FLAGS_text_dim);
  config.text_layers = absl::GetFlag(FLAGS_text_layers);
  config.text_seq_len = absl::GetFlag(FLAGS_text_seq_len);
  config.diffusion_steps = absl::GetFlag(FLAGS_diffusion_steps);
  config.prediction = absl::GetFlag(FLAGS_prediction);
  if (absl::Status s = config.Normalize(); !s.ok()) return s;
  return config;
}

// Writes the model directory of `kind` with fresh weights; returns its parameter count.
absl::StatusOr<int64_t> WriteModel(const std::string& out, const std::string& kind,
                                   const TrainedTokenizer& tokenizer) {
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  tandem::SafetensorsFile file;
  file.metadata["format"] = "pt";
  tandem::ModelProvenance prov;
  prov.source = absl::StrCat("tandem-init (random, seed ", seed, ")");
  if (kind == "text") {
    absl::StatusOr<tandem::LlamaConfig> config = LlamaConfigFromFlags(tokenizer.vocab_size);
    if (!config.ok()) return config.status();
    absl::StatusOr<tandem::TensorMap> weights = tandem::RandomLlamaWeights(*config, seed);
    if (!weights.ok()) return weights.status();
    file.tensors = *std::move(weights);
    file.metadata["tandem.config"] = config->ToJson();
    if (absl::Status s = tandem::WriteTextModelDir(out, *config, file, tokenizer.file, prov);
        !s.ok()) {
      return s;
    }
    return config->ParameterCount();
  }
  absl::StatusOr<tandem::DiffusionConfig> config = DiffusionConfigFromFlags(tokenizer.vocab_size);
  if (!config.ok()) return config.status();
  absl::StatusOr<tandem::TensorMap> weights = tandem::RandomDiffusionWeights(*config, seed);
  if (!weights.ok()) return weights.status();
  file.tensors = *std::move(weights);
  file.metadata["tandem.config"] = config->ToJson();
  if (absl::Status s = tandem::WriteImageModelDir(out, *config, file, tokenizer.file, prov);
      !s.ok()) {
    return s;
  }
  return config->ParameterCount();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "tandem-init --corpus=FILE --out=DIR [--vocab_size --dim --layers --heads --kv_heads "
      "--seq_len --seed]");
  absl::ParseCommandLine(argc, argv);
  const std::string corpus = absl::GetFlag(FLAGS_corpus);
  const std::string out = absl::GetFlag(FLAGS_out);
  const std::string kind = absl::GetFlag(FLAGS_kind);
  if (absl::Status s = CheckFlags(kind, corpus, out); !s.ok()) {
    return Fail(std::string(s.message()));
  }

  tandem::SetComputeThreads(0);
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) return Fail(absl::StrCat("cannot create ", out, ": ", ec.message()));
  absl::StatusOr<TrainedTokenizer> tokenizer = TrainTokenizer(out, kind, corpus);
  if (!tokenizer.ok()) return Fail(std::string(tokenizer.status().message()));
  absl::StatusOr<int64_t> parameters = WriteModel(out, kind, *tokenizer);
  if (!parameters.ok()) return Fail(std::string(parameters.status().message()));
  std::fprintf(stderr, "tandem-init: wrote %s model %s (%lld parameters, %d-piece tokenizer)\n",
               kind.c_str(), out.c_str(), static_cast<long long>(*parameters),
               tokenizer->vocab_size);
  return 0;
}

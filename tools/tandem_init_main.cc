// tandem-init: creates a servable, randomly initialised model directory whose SentencePiece
// tokenizer is trained on a corpus, so a fresh machine can serve (and train) before any training
// job has run.
//   tandem-init --corpus=FILE --out=DIR [--vocab_size --dim --layers --heads --kv_heads --seq_len
//               --seed]                                   a Llama-style LLM
//   tandem-init --kind=image --corpus=CAPTIONS --out=DIR [--image_size --channels --widths ...]
//                                                         a text-conditioned diffusion model
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "models/torch/device.h"
#include "trainer/data/image_dataset.h"
#include "models/image_model.h"
#include "models/llama/llama.h"
#include "models/model_dir.h"
#include "models/text/tokenizer.h"

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
  std::string corpus = absl::GetFlag(FLAGS_corpus);
  const std::string out = absl::GetFlag(FLAGS_out);
  const bool image_kind = absl::GetFlag(FLAGS_kind) == "image";
  if (out.empty()) return Fail("--out is required");
  if (corpus.empty() && !image_kind) return Fail("--corpus is required for a text model");
  namespace fs = std::filesystem;
  if (!corpus.empty() && !fs::is_regular_file(corpus)) {
    return Fail(absl::StrCat("corpus not found: ", corpus));
  }
  if (fs::exists(fs::path(out) / tandem::kConfigFile) && !absl::GetFlag(FLAGS_force)) {
    return Fail(absl::StrCat(out, " already holds a model; pass --force to replace it"));
  }

  tandem::SetComputeThreads(0);
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) return Fail(absl::StrCat("cannot create ", out, ": ", ec.message()));

  std::string captions_tmp;
  if (corpus.empty()) {
    // The captions the Fashion-MNIST dataset produces, every phrasing of every class.
    captions_tmp = absl::StrCat(out, "/.captions.", ::getpid(), ".txt");
    std::string text;
    for (int label = 0; label < static_cast<int>(tandem::FashionMnistClasses().size()); ++label) {
      for (uint64_t v = 0; v < 16; ++v) {
        absl::StrAppend(&text, tandem::FashionMnistCaption(label, v), "\n");
      }
    }
    if (absl::Status s = tandem::WriteFileAtomically(captions_tmp, text); !s.ok()) {
      return Fail(std::string(s.message()));
    }
    corpus = captions_tmp;
  }
  const std::string kind = absl::GetFlag(FLAGS_kind);
  if (kind != "text" && kind != "image") return Fail("--kind must be text or image");
  tandem::TokenizerTrainOptions topts;
  topts.vocab_size = absl::GetFlag(FLAGS_vocab_size);
  topts.model_type = absl::GetFlag(FLAGS_tokenizer_type);
  topts.seed = absl::GetFlag(FLAGS_seed);
  // Captions are a small corpus: let it use fewer pieces than asked rather than fail.
  topts.hard_vocab_limit = kind == "text";
  const std::string tok_tmp = absl::StrCat(out, "/.tokenizer.", ::getpid(), ".model");
  std::fprintf(stderr, "tandem-init: training a %d-piece %s tokenizer on %s\n",
               topts.vocab_size, topts.model_type.c_str(), corpus.c_str());
  if (absl::Status s = tandem::Tokenizer::Train(corpus, tok_tmp, topts); !s.ok()) {
    fs::remove(tok_tmp, ec);
    if (!captions_tmp.empty()) fs::remove(captions_tmp, ec);
    return Fail(std::string(s.message()));
  }
  if (!captions_tmp.empty()) fs::remove(captions_tmp, ec);
  absl::StatusOr<std::string> tok_bytes = tandem::ReadFile(tok_tmp);
  absl::StatusOr<std::unique_ptr<tandem::Tokenizer>> tok = tandem::Tokenizer::Load(tok_tmp);
  fs::remove(tok_tmp, ec);
  if (!tok_bytes.ok()) return Fail(std::string(tok_bytes.status().message()));
  if (!tok.ok()) return Fail(std::string(tok.status().message()));
  const int vocab = (*tok)->vocab_size();

  tandem::SafetensorsFile file;
  file.metadata["format"] = "pt";
  tandem::ModelProvenance prov;
  prov.source = absl::StrCat("tandem-init (random, seed ", absl::GetFlag(FLAGS_seed), ")");
  int64_t parameters = 0;
  if (kind == "text") {
    tandem::LlamaConfig config;
    config.vocab_size = vocab;
    config.dim = absl::GetFlag(FLAGS_dim);
    config.hidden_dim = absl::GetFlag(FLAGS_hidden_dim);
    config.n_layers = absl::GetFlag(FLAGS_layers);
    config.n_heads = absl::GetFlag(FLAGS_heads);
    config.n_kv_heads = absl::GetFlag(FLAGS_kv_heads) > 0 ? absl::GetFlag(FLAGS_kv_heads)
                                                          : config.n_heads;
    config.seq_len = absl::GetFlag(FLAGS_seq_len);
    config.tie_embeddings = absl::GetFlag(FLAGS_tie_embeddings);
    if (absl::Status s = config.Normalize(); !s.ok()) return Fail(std::string(s.message()));
    absl::StatusOr<tandem::TensorMap> weights =
        tandem::RandomLlamaWeights(config, absl::GetFlag(FLAGS_seed));
    if (!weights.ok()) return Fail(std::string(weights.status().message()));
    file.tensors = *std::move(weights);
    file.metadata["tandem.config"] = config.ToJson();
    if (absl::Status s = tandem::WriteTextModelDir(out, config, file, *tok_bytes, prov); !s.ok()) {
      return Fail(std::string(s.message()));
    }
    parameters = config.ParameterCount();
  } else {
    tandem::DiffusionConfig config;
    config.vocab_size = vocab;
    config.image_size = absl::GetFlag(FLAGS_image_size);
    config.channels = absl::GetFlag(FLAGS_channels);
    auto ints = [](const std::string& csv, std::vector<int>* out) {
      out->clear();
      for (absl::string_view part : absl::StrSplit(csv, ',', absl::SkipEmpty())) {
        int v = 0;
        if (!absl::SimpleAtoi(part, &v)) return false;
        out->push_back(v);
      }
      return true;
    };
    if (!ints(absl::GetFlag(FLAGS_widths), &config.unet_widths) ||
        !ints(absl::GetFlag(FLAGS_attention_levels), &config.attention_levels)) {
      return Fail("--widths and --attention_levels take comma-separated integers");
    }
    config.res_blocks = absl::GetFlag(FLAGS_res_blocks);
    config.text_dim = absl::GetFlag(FLAGS_text_dim);
    config.text_layers = absl::GetFlag(FLAGS_text_layers);
    config.text_seq_len = absl::GetFlag(FLAGS_text_seq_len);
    config.diffusion_steps = absl::GetFlag(FLAGS_diffusion_steps);
    config.prediction = absl::GetFlag(FLAGS_prediction);
    if (absl::Status s = config.Normalize(); !s.ok()) return Fail(std::string(s.message()));
    absl::StatusOr<tandem::TensorMap> weights =
        tandem::RandomDiffusionWeights(config, absl::GetFlag(FLAGS_seed));
    if (!weights.ok()) return Fail(std::string(weights.status().message()));
    file.tensors = *std::move(weights);
    file.metadata["tandem.config"] = config.ToJson();
    if (absl::Status s = tandem::WriteImageModelDir(out, config, file, *tok_bytes, prov);
        !s.ok()) {
      return Fail(std::string(s.message()));
    }
    parameters = config.ParameterCount();
  }
  std::fprintf(stderr, "tandem-init: wrote %s model %s (%lld parameters, %d-piece tokenizer)\n",
               kind.c_str(), out.c_str(), static_cast<long long>(parameters), vocab);
  return 0;
}

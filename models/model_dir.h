// A model directory: everything needed to serve one model, in files that other tools read too.
//   config.json        {"kind": "text", "architecture": "llama", dim, n_layers, ...} or
//                      {"kind": "image", "architecture": "unet-cross-attention", ...}
//   model.safetensors  the weights (names in models/llama.h)
//   tokenizer.model    the SentencePiece model, or
//   tokenizer.bin      a llama2.c tokenizer (models/text/llama2c_tokenizer.h): exactly one of the
//                      two, and its name says the kind
//   meta.json          optional provenance: {"source", "train_job_id", "train_step"}
// Torch-free.
#ifndef TANDEM_MODELS_MODEL_DIR_H_
#define TANDEM_MODELS_MODEL_DIR_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/diffusion/diffusion_config.h"
#include "models/llama/llama_config.h"
#include "models/formats/safetensors.h"
#include "models/text/tokenizer.h"

namespace tandem {

inline constexpr char kConfigFile[] = "config.json";
inline constexpr char kWeightsFile[] = "model.safetensors";
inline constexpr char kTokenizerFile[] = "tokenizer.model";        // SentencePiece
inline constexpr char kLlama2cTokenizerFile[] = "tokenizer.bin";   // llama2.c
inline constexpr char kMetaFile[] = "meta.json";

enum class ModelKind { kText, kImage };

struct ModelProvenance {
  std::string source;  // free text: "tandem-init", "train job <id>", ...
  std::string train_job_id;
  int64_t train_step = 0;
};

// The name a model directory gives the tokenizer file of `kind`.
const char* TokenizerFileName(TokenizerKind kind);
// The kind of tokenizer `dir` holds, by its file: NOT_FOUND when it has neither, INVALID_ARGUMENT
// when it has both (the kind would be a guess).
absl::StatusOr<TokenizerKind> FindTokenizer(const std::string& dir);

struct ModelDir {
  std::string path;
  ModelKind kind = ModelKind::kText;
  LlamaConfig llama;  // kText
  DiffusionConfig diffusion;  // kImage
  std::string config_json;  // the raw config (image models parse their own)
  TokenizerKind tokenizer_kind = TokenizerKind::kSentencePiece;
  ModelProvenance provenance;

  std::string weights_path() const { return path + "/" + kWeightsFile; }
  std::string tokenizer_path() const {
    return path + "/" + TokenizerFileName(tokenizer_kind);
  }
};

// Reads and validates config.json (and meta.json when present); checks the weight file exists
// and finds the tokenizer (FindTokenizer). NOT_FOUND naming the missing file, INVALID_ARGUMENT
// for a bad config or two tokenizers.
absl::StatusOr<ModelDir> ReadModelDir(const std::string& path);

// The directory's tokenizer, of the kind it holds (LoadTokenizer's errors).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadModelTokenizer(const ModelDir& dir);

// Writes a text model directory: config.json, model.safetensors (atomically), the tokenizer
// under its kind's name (removing a tokenizer of the other kind), meta.json. Creates `path` if
// needed.
absl::Status WriteTextModelDir(const std::string& path, const LlamaConfig& config,
                               const SafetensorsFile& weights, const TokenizerFile& tokenizer,
                               const ModelProvenance& provenance);

// Writes an image (diffusion) model directory, like WriteTextModelDir.
absl::Status WriteImageModelDir(const std::string& path, const DiffusionConfig& config,
                                const SafetensorsFile& weights, const TokenizerFile& tokenizer,
                                const ModelProvenance& provenance);

// Writes `contents` to `path` atomically (temp file, fsync, rename, fsync of the folder).
absl::Status WriteFileAtomically(const std::string& path, const std::string& contents);
absl::StatusOr<std::string> ReadFile(const std::string& path);

}  // namespace tandem

#endif  // TANDEM_MODELS_MODEL_DIR_H_

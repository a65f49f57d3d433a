// A model directory: everything needed to serve one model, in files that other tools read too.
//   config.json        {"kind": "text", "architecture": "llama", dim, n_layers, ...} or
//                      {"kind": "image", "architecture": "unet-cross-attention", ...}
//   model.safetensors  the weights (names in models/llama.h)
//   tokenizer.model    the SentencePiece model
//   meta.json          optional provenance: {"source", "train_job_id", "train_step"}
// Torch-free.
#ifndef TANDEM_MODELS_MODEL_DIR_H_
#define TANDEM_MODELS_MODEL_DIR_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/diffusion/diffusion_config.h"
#include "models/llama/llama_config.h"
#include "models/formats/safetensors.h"

namespace tandem {

inline constexpr char kConfigFile[] = "config.json";
inline constexpr char kWeightsFile[] = "model.safetensors";
inline constexpr char kTokenizerFile[] = "tokenizer.model";
inline constexpr char kMetaFile[] = "meta.json";

enum class ModelKind { kText, kImage };

struct ModelProvenance {
  std::string source;  // free text: "tandem-init", "train job <id>", ...
  std::string train_job_id;
  int64_t train_step = 0;
};

struct ModelDir {
  std::string path;
  ModelKind kind = ModelKind::kText;
  LlamaConfig llama;  // kText
  DiffusionConfig diffusion;  // kImage
  std::string config_json;  // the raw config (image models parse their own)
  ModelProvenance provenance;

  std::string weights_path() const { return path + "/" + kWeightsFile; }
  std::string tokenizer_path() const { return path + "/" + kTokenizerFile; }
};

// Reads and validates config.json (and meta.json when present); checks the weight and tokenizer
// files exist. NOT_FOUND naming the missing file, INVALID_ARGUMENT for a bad config.
absl::StatusOr<ModelDir> ReadModelDir(const std::string& path);

// Writes a text model directory: config.json, model.safetensors (atomically), tokenizer.model
// (copied from `tokenizer_model_bytes`), meta.json. Creates `path` if needed.
absl::Status WriteTextModelDir(const std::string& path, const LlamaConfig& config,
                               const SafetensorsFile& weights,
                               const std::string& tokenizer_model_bytes,
                               const ModelProvenance& provenance);

// Writes an image (diffusion) model directory, like WriteTextModelDir.
absl::Status WriteImageModelDir(const std::string& path, const DiffusionConfig& config,
                                const SafetensorsFile& weights,
                                const std::string& tokenizer_model_bytes,
                                const ModelProvenance& provenance);

// Writes `contents` to `path` atomically (temp file, fsync, rename, fsync of the folder).
absl::Status WriteFileAtomically(const std::string& path, const std::string& contents);
absl::StatusOr<std::string> ReadFile(const std::string& path);

}  // namespace tandem

#endif  // TANDEM_MODELS_MODEL_DIR_H_

#include "models/llama2c_model.h"

#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "models/model_dir.h"
#include "models/text/llama2c_tokenizer.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

// run.c's constants (rmsnorm's 1e-5f, RoPE's powf(10000.0f, ...), the BOS it starts and stops at).
constexpr float kRunCNormEps = 1e-5f;
constexpr float kRunCRopeTheta = 10000.0f;

absl::Status CheckOutDirFree(const std::string& out_dir) {
  std::error_code ec;
  if (!fs::exists(out_dir, ec)) return absl::OkStatus();
  if (!fs::is_directory(out_dir, ec)) {
    return absl::AlreadyExistsError(absl::StrCat(out_dir, " exists and is not a folder"));
  }
  if (!fs::is_empty(out_dir, ec)) {
    return absl::AlreadyExistsError(
        absl::StrCat(out_dir, " is not empty; import into a new model directory"));
  }
  return absl::OkStatus();
}

// The tokenizer at `path`, cut to the vocab_size pieces run.c reads.
absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> ReadTokenizerFor(const std::string& path,
                                                                   int vocab_size) {
  absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> tok = Llama2cTokenizer::Load(path);
  if (!tok.ok()) return tok.status();
  Llama2cVocab vocab = (*tok)->vocab();
  if (static_cast<int>(vocab.pieces.size()) < vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, " has ", vocab.pieces.size(), " pieces but the checkpoint's vocab_size is ",
        vocab_size, " (run.c reads that many): not this model's tokenizer"));
  }
  vocab.pieces.resize(vocab_size);
  vocab.scores.resize(vocab_size);
  return Llama2cTokenizer::FromVocab(std::move(vocab));
}

}  // namespace

absl::StatusOr<LlamaConfig> LlamaConfigFromLlama2c(const Llama2cHeader& h) {
  LlamaConfig c;
  c.dim = h.dim;
  c.hidden_dim = h.hidden_dim;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  c.vocab_size = h.vocab_size;
  c.seq_len = h.seq_len;
  c.norm_eps = kRunCNormEps;
  c.rope_theta = kRunCRopeTheta;
  c.tie_embeddings = h.shared_classifier;
  c.bos_id = kLlama2cBosId;
  c.eos_id = kLlama2cBosId;  // run.c stops at BOS
  if (absl::Status s = c.Normalize(); !s.ok()) return s;
  return c;
}

absl::StatusOr<Llama2cHeader> Llama2cHeaderFromConfig(const LlamaConfig& c, int version) {
  auto refuse = [](const char* field, auto value, auto want) {
    return absl::FailedPreconditionError(absl::StrCat("run.c computes with ", field, " ", want,
                                                      "; this model's is ", value,
                                                      ", so run.c would not reproduce it"));
  };
  if (c.norm_eps != kRunCNormEps) return refuse("norm_eps", c.norm_eps, kRunCNormEps);
  if (c.rope_theta != kRunCRopeTheta) return refuse("rope_theta", c.rope_theta, kRunCRopeTheta);
  if (c.bos_id != kLlama2cBosId) return refuse("bos_id", c.bos_id, kLlama2cBosId);
  Llama2cHeader h;
  h.dim = c.dim;
  h.hidden_dim = c.hidden_dim;
  h.n_layers = c.n_layers;
  h.n_heads = c.n_heads;
  h.n_kv_heads = c.n_kv_heads;
  h.vocab_size = c.vocab_size;
  h.seq_len = c.seq_len;
  h.shared_classifier = c.tie_embeddings;
  h.version = version;
  return h;
}

absl::StatusOr<Llama2cImportSummary> ImportLlama2c(const std::string& checkpoint_path,
                                                   const std::string& tokenizer_path,
                                                   const std::string& out_dir) {
  if (absl::Status s = CheckOutDirFree(out_dir); !s.ok()) return s;
  absl::StatusOr<Llama2cCheckpoint> ckpt = ReadLlama2cCheckpoint(checkpoint_path);
  if (!ckpt.ok()) return ckpt.status();
  absl::StatusOr<LlamaConfig> config = LlamaConfigFromLlama2c(ckpt->header);
  if (!config.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(checkpoint_path, ": ", config.status().message()));
  }
  absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> tok =
      ReadTokenizerFor(tokenizer_path, config->vocab_size);
  if (!tok.ok()) return tok.status();

  SafetensorsFile weights;
  weights.tensors = std::move(ckpt->weights);
  weights.metadata["format"] = "pt";
  weights.metadata["tandem.config"] = config->ToJson();
  ModelProvenance provenance;
  provenance.source = absl::StrCat("llama2.c import (version ", ckpt->header.version, ") of ",
                                   checkpoint_path, " with ", tokenizer_path);
  if (absl::Status s = WriteTextModelDir(out_dir, *config, weights, (*tok)->File(), provenance);
      !s.ok()) {
    return s;
  }
  Llama2cImportSummary summary;
  summary.config = *config;
  summary.version = ckpt->header.version;
  summary.tokenizer_pieces = (*tok)->vocab_size();
  return summary;
}

absl::StatusOr<Llama2cExportSummary> ExportLlama2c(const std::string& model_dir,
                                                   const std::string& out_dir,
                                                   const Llama2cExportOptions& options) {
  absl::StatusOr<ModelDir> dir = ReadModelDir(model_dir);
  if (!dir.ok()) return dir.status();
  if (dir->kind != ModelKind::kText) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_dir, " is an image model; only LLMs export to llama2.c"));
  }
  Llama2cCheckpoint ckpt;
  absl::StatusOr<Llama2cHeader> header = Llama2cHeaderFromConfig(dir->llama, options.version);
  if (!header.ok()) return header.status();
  ckpt.header = *header;
  ckpt.header.group_size = options.group_size;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadModelTokenizer(*dir);
  if (!tok.ok()) return tok.status();
  absl::StatusOr<Llama2cVocab> vocab = Llama2cVocabFrom(**tok, dir->llama.vocab_size);
  if (!vocab.ok()) return vocab.status();
  absl::StatusOr<SafetensorsFile> weights = ReadSafetensors(dir->weights_path());
  if (!weights.ok()) return weights.status();
  ckpt.weights = std::move(weights->tensors);
  absl::StatusOr<std::string> bytes = SerializeLlama2cCheckpoint(ckpt);
  if (!bytes.ok()) {
    return absl::Status(bytes.status().code(),
                        absl::StrCat(dir->weights_path(), ": ", bytes.status().message()));
  }

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", out_dir, ": ", ec.message()));
  Llama2cExportSummary summary;
  summary.checkpoint_path = out_dir + "/model.bin";
  summary.tokenizer_path = out_dir + "/tokenizer.bin";
  summary.tokenizer_pieces = (*tok)->vocab_size();
  if (absl::Status s = WriteFileAtomically(summary.checkpoint_path, *bytes); !s.ok()) return s;
  if (absl::Status s = WriteFileAtomically(summary.tokenizer_path, SerializeLlama2cVocab(*vocab));
      !s.ok()) {
    return s;
  }
  return summary;
}

}  // namespace tandem

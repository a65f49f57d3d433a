// llama2.c's "two files" and tandem model directories, both ways: a checkpoint (model.bin,
// models/formats/llama2c.h) with its tokenizer.bin (models/text/llama2c_tokenizer.h) imported as
// a model directory tandemd serves, and any tandem LLM directory exported as the two files
// llama2.c's run.c runs unmodified. Torch-free (`tandem import` / `tandem export` use this).
// Stateless functions; safe from any thread for distinct paths.
//
// What the two files cannot say, and how the conversion fills it in:
//   * run.c hardcodes RMSNorm eps 1e-5, RoPE theta 10000 and BOS = 1; an import writes those,
//     and an export refuses a model with other values (run.c would compute something else).
//   * run.c ends a generation when the model emits BOS (llama2.c's models start the next text
//     with it) and never at EOS. An import therefore writes eos_id 1, so that tandemd stops where
//     run.c stops (set "eos_id": 2 in config.json for a model trained to end texts with </s>).
//     An exported model with eos_id 2 stops at EOS in tandem, and runs on past it in run.c.
//   * A version 2 (Q8_0) checkpoint imports dequantized to float32: tandem serves what runq.c's
//     weights are, not runq.c's int8 activations, so its text follows run.c on the dequantized
//     weights rather than runq.c.
#ifndef TANDEM_MODELS_LLAMA2C_MODEL_H_
#define TANDEM_MODELS_LLAMA2C_MODEL_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/formats/llama2c.h"
#include "models/llama/llama_config.h"

namespace tandem {

// The model a llama2.c header describes, with run.c's fixed values (above). INVALID_ARGUMENT
// when LlamaConfig refuses the sizes.
absl::StatusOr<LlamaConfig> LlamaConfigFromLlama2c(const Llama2cHeader& header);
// The header of `config` in `version`'s layout. FAILED_PRECONDITION naming the field when run.c
// would not compute this model: norm_eps not 1e-5, rope_theta not 10000, bos_id not 1.
absl::StatusOr<Llama2cHeader> Llama2cHeaderFromConfig(const LlamaConfig& config, int version);

struct Llama2cImportSummary {
  LlamaConfig config;
  int version = 0;  // the checkpoint's
  int tokenizer_pieces = 0;
};

// Writes the model directory `out_dir` (config.json, model.safetensors, tokenizer.bin,
// meta.json) from a checkpoint of any version and its tokenizer.bin. The tokenizer must hold at
// least the checkpoint's vocab_size pieces (run.c reads that many; further ones are dropped).
// ALREADY_EXISTS when out_dir exists and is not empty; the checkpoint's and the tokenizer's
// errors (NOT_FOUND, DATA_LOSS, INVALID_ARGUMENT) naming the file; INVALID_ARGUMENT when the
// tokenizer has fewer pieces than the vocabulary.
absl::StatusOr<Llama2cImportSummary> ImportLlama2c(const std::string& checkpoint_path,
                                                   const std::string& tokenizer_path,
                                                   const std::string& out_dir);

struct Llama2cExportOptions {
  int version = 0;     // 0: what run.c reads; 1: float32 with a header; 2: Q8_0 for runq.c
  int group_size = 0;  // version 2; 0: kLlama2cDefaultGroupSize, halved until it fits
};

struct Llama2cExportSummary {
  std::string checkpoint_path;  // out_dir/model.bin
  std::string tokenizer_path;   // out_dir/tokenizer.bin
  int tokenizer_pieces = 0;     // the model's own (the file is padded to vocab_size)
};

// Writes out_dir/model.bin and out_dir/tokenizer.bin (atomically, replacing earlier ones;
// out_dir is created when needed) from the text model directory `model_dir`, SentencePiece or
// llama2.c tokenizer alike. NOT_FOUND / INVALID_ARGUMENT for a missing or bad directory (an image
// model is INVALID_ARGUMENT); FAILED_PRECONDITION when run.c could not run the model as tandem
// does (Llama2cHeaderFromConfig, Llama2cVocabFrom).
absl::StatusOr<Llama2cExportSummary> ExportLlama2c(const std::string& model_dir,
                                                   const std::string& out_dir,
                                                   const Llama2cExportOptions& options);

}  // namespace tandem

#endif  // TANDEM_MODELS_LLAMA2C_MODEL_H_

// The tokenizer of a training job. Torch-free.
#ifndef TANDEM_TRAINER_JOB_TOKENIZER_H_
#define TANDEM_TRAINER_JOB_TOKENIZER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/text/sentencepiece_tokenizer.h"
#include "models/text/tokenizer.h"

namespace tandem {

// The job's tokenizer, kept in work_dir (as tokenizer.model or tokenizer.bin, models/model_dir.h)
// so that a resumed job reuses the very same one: that file when it exists; else a copy of
// init_from_dir's tokenizer, of whichever kind it holds (when init_from_dir is set); else a
// SentencePiece model trained with `train_options` on the corpus `write_corpus` writes (UTF-8,
// one sentence a line) to the path it is given. The file appears atomically (trained under a
// temporary name, then renamed). Creates work_dir.
absl::StatusOr<std::unique_ptr<Tokenizer>> JobTokenizer(
    const std::string& work_dir, const std::string& init_from_dir,
    const TokenizerTrainOptions& train_options,
    const std::function<absl::Status(const std::string& corpus_path)>& write_corpus);

}  // namespace tandem

#endif  // TANDEM_TRAINER_JOB_TOKENIZER_H_

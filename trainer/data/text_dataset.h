// Text datasets for LLM training: a UTF-8 text file, or a folder of .txt files (read in name
// order), cut into documents and split into training and held-out documents. Torch-free.
//
// Documents: a file with lines holding a single "%" (the fortune format) is cut at those lines;
// any other file is cut at blank lines (paragraphs). Every k-th document (k = round(1 /
// holdout_fraction); 10 by default: the 10th, 20th, ...) is held out.
//
// Tokens: each document becomes BOS + its ids; the training documents' tokens are concatenated
// into one stream from which training windows are drawn (packed sequences). Held-out bits per
// byte count the nats of every held-out token (boundaries included) against the held-out
// documents' UTF-8 bytes.
#ifndef TANDEM_TRAINER_DATA_TEXT_DATASET_H_
#define TANDEM_TRAINER_DATA_TEXT_DATASET_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/text/tokenizer.h"

namespace tandem {

struct TextCorpus {
  std::vector<std::string> train;    // documents
  std::vector<std::string> heldout;  // documents
  int64_t train_bytes = 0;
  int64_t heldout_bytes = 0;
};

// NOT_FOUND when the path does not exist; INVALID_ARGUMENT when it holds no text, is not UTF-8
// text, or leaves no training or no held-out document. Every file is read beneath `root` when it
// is set (base/confined_open.h: PERMISSION_DENIED for a symlink leading out); empty: unconfined.
absl::StatusOr<TextCorpus> LoadTextCorpus(const std::string& path, double holdout_fraction,
                                          const std::string& root = "");

// The smallest vocab_size the job's tokenizer can be trained with on `corpus`: SentencePiece
// needs a piece for every distinct character of the lines it reads (the training documents'
// lines, up to its 16384-byte line limit; '\n' separates lines) besides the 3 control and 256
// byte pieces. Counting is linear in the corpus.
int MinimumVocabSize(const TextCorpus& corpus);
inline constexpr int kTokenizerMetaPieces = 3 + 256;

// Writes the training documents one line per line of text (the SentencePiece trainer's input).
absl::Status WriteTokenizerCorpus(const TextCorpus& corpus, const std::string& path);

// BOS + ids of each document, concatenated.
std::vector<int32_t> TokenizeDocuments(const Tokenizer& tokenizer,
                                       const std::vector<std::string>& documents);

}  // namespace tandem

#endif  // TANDEM_TRAINER_DATA_TEXT_DATASET_H_

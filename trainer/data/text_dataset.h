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

// One held-out window: tokens [start, start + len] of the packed held-out stream (len + 1 tokens,
// len predictions), of which the predictions of tokens start + 1 + first_scored ... start + len
// count (the ones before only give context).
struct HeldOutWindow {
  int64_t start = 0;
  int64_t len = 0;
  int64_t first_scored = 0;

  bool operator==(const HeldOutWindow& o) const {
    return start == o.start && len == o.len && first_scored == o.first_scored;
  }
};

// Windows over the packed held-out stream `tokens` (TokenizeDocuments: each document is BOS +
// its ids) that predict every token but the first exactly once, each from its own document:
// a document is read from its BOS, and the token that follows it (the next document's BOS: the
// document's end) is predicted at its end. A document longer than `context` (the model's
// seq_len) goes on in windows of `context` predictions whose first half is context and whose
// second half is scored, so every token sees at least half the context or its whole document.
// A context cut at a fixed stride instead would fall inside documents and leave the tokens after
// it without their document's beginning. Pure; `context` >= 1.
std::vector<HeldOutWindow> HeldOutWindows(const std::vector<int32_t>& tokens, int32_t bos_id,
                                          int64_t context);

}  // namespace tandem

#endif  // TANDEM_TRAINER_DATA_TEXT_DATASET_H_

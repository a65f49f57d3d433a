// Tokenizer: text to token ids and back, behind one interface with two kinds of file —
//   SentencePiece (tokenizer.model; sentencepiece_tokenizer.h), what tandem trains, and
//   llama2.c (tokenizer.bin; llama2c_tokenizer.h), what llama2.c's run.c reads.
// A model directory holds one of them (models/model_dir.h says which). Torch-free.
// Implementations are immutable after loading and thread-safe.
#ifndef TANDEM_MODELS_TEXT_TOKENIZER_H_
#define TANDEM_MODELS_TEXT_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace tandem {

enum class TokenizerKind { kSentencePiece, kLlama2c };

// "sentencepiece" or "llama2c", for messages.
const char* TokenizerKindName(TokenizerKind kind);

// A tokenizer as a file holds it: its kind and the file's bytes.
struct TokenizerFile {
  TokenizerKind kind = TokenizerKind::kSentencePiece;
  std::string bytes;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  virtual TokenizerKind kind() const = 0;
  // Text to ids, without BOS/EOS.
  virtual std::vector<int32_t> Encode(absl::string_view text) const = 0;
  // Ids to text (special ids are dropped), as the text of a sequence that starts with BOS: the
  // leading space the first piece carries (SentencePiece's dummy prefix) is not shown. Invalid
  // UTF-8 (dangling byte pieces) comes out as U+FFFD, one per byte.
  virtual std::string Decode(absl::Span<const int32_t> ids) const = 0;
  // True for the ids Decode drops: control symbols (<s>, </s>), <unk>, unused pieces and ids
  // outside [0, vocab_size()).
  virtual bool IsSpecial(int32_t id) const = 0;
  // The piece as the file stores it ("▁the" in SentencePiece, " the" in llama2.c, "<0x0A>" for
  // a byte in both); empty outside [0, vocab_size()).
  virtual std::string IdToPiece(int32_t id) const = 0;
  // The piece's score (SentencePiece: log probability or negated merge rank; llama2.c: the
  // merge priority run.c's encoder uses); 0 outside [0, vocab_size()).
  virtual float Score(int32_t id) const = 0;

  virtual int vocab_size() const = 0;
  virtual int bos_id() const = 0;
  virtual int eos_id() const = 0;
  // The file's bytes (kind() says which format).
  virtual std::string Serialized() const = 0;

  TokenizerFile File() const { return TokenizerFile{kind(), Serialized()}; }
};

// Loads a tokenizer file of `kind`: NOT_FOUND when it does not exist, INVALID_ARGUMENT (naming
// the path) when it is not a valid file of that kind.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(TokenizerKind kind,
                                                         const std::string& path);
// The tokenizer of `file`'s bytes; INVALID_ARGUMENT when they are not a valid file of its kind.
absl::StatusOr<std::unique_ptr<Tokenizer>> TokenizerFromFile(const TokenizerFile& file);

}  // namespace tandem

#endif  // TANDEM_MODELS_TEXT_TOKENIZER_H_

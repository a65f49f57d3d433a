// The llama2.c tokenizer: the tokenizer.bin file that llama2.c's tokenizer.py writes and run.c
// reads, and run.c's encoder and decoder over it. Torch-free; Llama2cTokenizer is immutable after
// construction and thread-safe.
//
// File (little-endian): uint32 max_token_length, then per token a float32 score, an int32 length
// and that many bytes (the piece; " " where SentencePiece writes "▁"). The count is not stored:
// run.c reads as many tokens as its checkpoint's vocab_size says; here the file is read to its
// end. Ids 0, 1, 2 are <unk>, BOS and EOS, and 3 + b is the piece "<0xBB>" of byte b (run.c's
// byte fallback assumes so).
//
// Encoding is run.c's encode(text, bos=0, eos=0), id for id: a dummy-prefix " " token (when the
// text is not empty), then each UTF-8 code point (run.c's grouping: a lead byte and up to three
// continuation bytes) as its piece when the vocabulary has it, else its bytes as byte tokens
// (byte + 3); then, repeatedly, the adjacent pair whose concatenated piece is in the vocabulary
// with the highest score (above -1e10; the leftmost pair on ties) is merged, until none is left.
// Pieces compare as run.c's C strings do: byte-wise, up to a first NUL byte, and a piece that
// occurs twice resolves as run.c's bsearch over its stably sorted vocabulary finds it. The one
// departure: run.c stops at a NUL in the text; here a NUL byte encodes as the byte token 3.
// Done with a heap in O(n log n), not run.c's O(n^2) rescans; the merges are the same.
//
// Decoding is run.c's decode: a piece right after BOS loses one leading space, and a piece
// "<0xBB>" is the raw byte BB. Decode(ids) decodes as if ids followed BOS (so the first piece
// loses its leading space, as SentencePiece's decoder does too), drops the special ids, and
// shows invalid UTF-8 as U+FFFD per byte — where run.c's safe_printf prints a lone byte that is
// not printable or whitespace as nothing (so run.c shows neither half-characters nor multi-byte
// characters made of byte tokens).
#ifndef TANDEM_MODELS_TEXT_LLAMA2C_TOKENIZER_H_
#define TANDEM_MODELS_TEXT_LLAMA2C_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "models/text/tokenizer.h"

namespace tandem {

// run.c's fixed ids.
inline constexpr int32_t kLlama2cUnkId = 0;
inline constexpr int32_t kLlama2cBosId = 1;
inline constexpr int32_t kLlama2cEosId = 2;
inline constexpr int32_t kLlama2cByteOffset = 3;  // byte b is id b + 3
inline constexpr int kLlama2cMinVocab = kLlama2cByteOffset + 256;

// The contents of a tokenizer.bin.
struct Llama2cVocab {
  uint32_t max_token_length = 0;  // the longest piece, in bytes
  std::vector<std::string> pieces;
  std::vector<float> scores;  // one per piece
};

// INVALID_ARGUMENT when `bytes` is not a tokenizer.bin: shorter than its 4-byte header, a token
// cut short, a length that is not positive (run.c cannot read an empty piece) or exceeds
// max_token_length (run.c's merge buffer would overflow).
absl::StatusOr<Llama2cVocab> ParseLlama2cVocab(absl::string_view bytes);
std::string SerializeLlama2cVocab(const Llama2cVocab& vocab);

// The vocabulary of `tokenizer` as run.c wants it, vocab_size entries long: llama2.c's
// tokenizer.py export (SentencePiece: each piece with "▁" as " ", BOS as "\n<s>\n", EOS as
// "\n</s>\n", and its score; llama2.c: the pieces as they are). Ids from tokenizer.vocab_size()
// up to vocab_size (a model's padded embedding rows) get the piece "\xFF": no valid UTF-8 text
// looks it up, no merge makes it, and run.c prints it as nothing. FAILED_PRECONDITION when run.c
// could not use the tokenizer: BOS not 1, EOS not 2, or ids 3..258 not the byte pieces <0x00>..
// <0xFF>; INVALID_ARGUMENT when vocab_size is below tokenizer.vocab_size().
absl::StatusOr<Llama2cVocab> Llama2cVocabFrom(const Tokenizer& tokenizer, int vocab_size);

// A deterministic vocabulary of vocab_size (>= kLlama2cMinVocab) pieces for benchmarks and tests,
// shaped like a trained one: <unk>, BOS, EOS, the 256 byte pieces, " " and the printable ASCII
// characters (plus "é", "ü" and "日", so that code points outside ASCII occur), then BPE merges
// learned on a built-in English text (score -k for the k-th, as SentencePiece scores BPE), then
// concatenations of earlier pieces drawn with `seed` until vocab_size is reached. Every merged
// piece is the concatenation of two earlier pieces, so run.c's encoder reaches it.
Llama2cVocab SyntheticLlama2cVocab(int vocab_size, uint64_t seed);

class Llama2cTokenizer final : public Tokenizer {
 public:
  // INVALID_ARGUMENT when the vocabulary has fewer than kLlama2cMinVocab pieces (<unk>, BOS, EOS
  // and the 256 byte pieces run.c's byte fallback points at) or a score per piece is missing.
  static absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> FromVocab(Llama2cVocab vocab);
  // The file's bytes: ParseLlama2cVocab, then FromVocab.
  static absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> FromSerialized(absl::string_view bytes);
  // NOT_FOUND when `path` does not exist; INVALID_ARGUMENT naming it when it is not valid.
  static absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Load(const std::string& path);

  TokenizerKind kind() const override { return TokenizerKind::kLlama2c; }
  std::vector<int32_t> Encode(absl::string_view text) const override;
  std::string Decode(absl::Span<const int32_t> ids) const override;
  // <unk>, BOS, EOS, ids outside the vocabulary, and pieces that are neither valid UTF-8 nor a
  // byte token (the "\xFF" padding of Llama2cVocabFrom).
  bool IsSpecial(int32_t id) const override;
  std::string IdToPiece(int32_t id) const override;
  float Score(int32_t id) const override;
  int vocab_size() const override { return static_cast<int>(vocab_.pieces.size()); }
  int bos_id() const override { return kLlama2cBosId; }
  int eos_id() const override { return kLlama2cEosId; }
  std::string Serialized() const override { return SerializeLlama2cVocab(vocab_); }

  const Llama2cVocab& vocab() const { return vocab_; }

 private:
  explicit Llama2cTokenizer(Llama2cVocab vocab);
  // run.c's str_lookup: the id whose piece (as a C string) equals `s`, or -1.
  int32_t Lookup(absl::string_view s) const;
  // The id's piece up to a first NUL byte, as run.c sees it.
  absl::string_view CPiece(int32_t id) const { return c_pieces_[id]; }
  // Appends the code points of `text` as run.c's first pass does.
  void AppendCodePoints(absl::string_view text, std::vector<int32_t>* ids) const;
  // Merges adjacent pairs of `ids` in place, best score first.
  void MergePairs(std::vector<int32_t>* ids) const;

  Llama2cVocab vocab_;
  std::vector<absl::string_view> c_pieces_;  // into vocab_.pieces
  std::vector<int32_t> sorted_;              // ids by CPiece, stable (run.c's sorted_vocab)
  std::vector<bool> special_;                // by id
  int32_t space_id_ = -1;                    // the piece " " (run.c's dummy prefix), or -1
};

}  // namespace tandem

#endif  // TANDEM_MODELS_TEXT_LLAMA2C_TOKENIZER_H_

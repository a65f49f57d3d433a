// SentencePieceTokenizer: a SentencePiece model (tokenizer.model in a model directory), and
// training one on a text corpus. Torch-free. Thread-safe after Load (SentencePiece's encode and
// decode are const).
// SentencePiece itself lives in the module libtandem_sentencepiece.so, loaded on first use (see
// sentencepiece_api.h for why); it is looked up in $TANDEM_SENTENCEPIECE_MODULE, then beside the
// executable, then in ../lib, then by the dynamic loader's search path.
#ifndef TANDEM_MODELS_TEXT_SENTENCEPIECE_TOKENIZER_H_
#define TANDEM_MODELS_TEXT_SENTENCEPIECE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "models/text/tokenizer.h"

struct tandem_spm_api;

namespace tandem {

struct TokenizerTrainOptions {
  int vocab_size = 512;
  std::string model_type = "bpe";  // "bpe" or "unigram"
  // Lines sampled from the corpus for training (SentencePiece's input_sentence_size); 0 = all.
  int64_t max_sentences = 2000000;
  int num_threads = 0;  // 0: all cores
  uint64_t seed = 0;
  // false: vocab_size is an upper bound (a small corpus, e.g. captions, may not fill it); the
  // trained tokenizer's vocab_size() says how many pieces it got.
  bool hard_vocab_limit = true;
};

class SentencePieceTokenizer final : public Tokenizer {
 public:
  ~SentencePieceTokenizer() override;

  // Loads a SentencePiece model file. NOT_FOUND / INVALID_ARGUMENT with the path on failure.
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> Load(
      const std::string& model_path);
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> FromSerialized(
      const std::string& proto_bytes);

  // Trains a model on `corpus_path` (UTF-8 text, one sentence or paragraph per line) and writes
  // it to `model_path`. Ids: 0 <unk>, 1 <s> (BOS), 2 </s> (EOS), then byte-fallback pieces for all
  // 256 bytes (so any UTF-8 text encodes without <unk>), then learned pieces.
  static absl::Status Train(const std::string& corpus_path, const std::string& model_path,
                            const TokenizerTrainOptions& options);

  TokenizerKind kind() const override { return TokenizerKind::kSentencePiece; }
  std::vector<int32_t> Encode(absl::string_view text) const override;
  std::string Decode(absl::Span<const int32_t> ids) const override;
  bool IsSpecial(int32_t id) const override;
  std::string IdToPiece(int32_t id) const override;
  float Score(int32_t id) const override;
  int vocab_size() const override;
  int bos_id() const override;
  int eos_id() const override;
  std::string Serialized() const override;

 private:
  SentencePieceTokenizer(const tandem_spm_api* api, void* sp) : api_(api), sp_(sp) {}
  const tandem_spm_api* api_;
  void* sp_;  // owned SentencePieceProcessor inside the module
};

}  // namespace tandem

#endif  // TANDEM_MODELS_TEXT_SENTENCEPIECE_TOKENIZER_H_

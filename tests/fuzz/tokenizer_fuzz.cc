// The tokenizer loader (SentencePiece, from its own module) on arbitrary model bytes: a status,
// or a tokenizer whose encodings stay inside its vocabulary and decode.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "models/text/sentencepiece_tokenizer.h"
#include "models/text/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<std::unique_ptr<tandem::Tokenizer>> tok =
      tandem::SentencePieceTokenizer::FromSerialized(std::string(reinterpret_cast<const char*>(data), size));
  if (!tok.ok()) return 0;
  const std::vector<int32_t> ids = (*tok)->Encode("the cat sat on the mat \xc3\xa9");
  for (int32_t id : ids) {
    if (id < 0 || id >= (*tok)->vocab_size()) std::abort();
  }
  (void)(*tok)->Decode(ids);
  return 0;
}

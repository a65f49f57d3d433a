#include "models/text/tokenizer.h"

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "models/text/llama2c_tokenizer.h"
#include "models/text/sentencepiece_tokenizer.h"

namespace tandem {

const char* TokenizerKindName(TokenizerKind kind) {
  return kind == TokenizerKind::kLlama2c ? "llama2c" : "sentencepiece";
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(TokenizerKind kind,
                                                         const std::string& path) {
  if (kind == TokenizerKind::kLlama2c) return Llama2cTokenizer::Load(path);
  return SentencePieceTokenizer::Load(path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> TokenizerFromFile(const TokenizerFile& file) {
  if (file.kind == TokenizerKind::kLlama2c) return Llama2cTokenizer::FromSerialized(file.bytes);
  return SentencePieceTokenizer::FromSerialized(file.bytes);
}

}  // namespace tandem

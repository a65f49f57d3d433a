#include "trainer/job_tokenizer.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "models/model_dir.h"

namespace tandem {

absl::StatusOr<std::unique_ptr<Tokenizer>> JobTokenizer(
    const std::string& work_dir, const std::string& init_from_dir,
    const TokenizerTrainOptions& train_options,
    const std::function<absl::Status(const std::string& corpus_path)>& write_corpus) {
  namespace fs = std::filesystem;
  absl::StatusOr<TokenizerKind> kept = FindTokenizer(work_dir);
  if (kept.ok()) return LoadTokenizer(*kept, work_dir + "/" + TokenizerFileName(*kept));
  if (!absl::IsNotFound(kept.status())) return kept.status();
  std::error_code ec;
  fs::create_directories(work_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", work_dir, ": ", ec.message()));
  if (!init_from_dir.empty()) {
    absl::StatusOr<TokenizerKind> kind = FindTokenizer(init_from_dir);
    if (!kind.ok()) return kind.status();
    const std::string name = TokenizerFileName(*kind);
    absl::StatusOr<std::string> bytes = ReadFile(init_from_dir + "/" + name);
    if (!bytes.ok()) return bytes.status();
    if (absl::Status s = WriteFileAtomically(work_dir + "/" + name, *bytes); !s.ok()) return s;
    return LoadTokenizer(*kind, work_dir + "/" + name);
  }
  const std::string path = work_dir + "/" + kTokenizerFile;
  const std::string corpus_path = work_dir + "/.tokenizer_corpus.txt";
  if (absl::Status s = write_corpus(corpus_path); !s.ok()) return s;
  const std::string tmp = work_dir + "/.tokenizer.tmp.model";
  absl::Status trained = SentencePieceTokenizer::Train(corpus_path, tmp, train_options);
  fs::remove(corpus_path, ec);
  if (!trained.ok()) return trained;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return LoadTokenizer(TokenizerKind::kSentencePiece, path);
}

}  // namespace tandem

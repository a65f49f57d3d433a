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
  const std::string path = work_dir + "/" + kTokenizerFile;
  std::error_code ec;
  if (fs::exists(path, ec)) return Tokenizer::Load(path);
  fs::create_directories(work_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", work_dir, ": ", ec.message()));
  if (!init_from_dir.empty()) {
    absl::StatusOr<std::string> bytes = ReadFile(init_from_dir + "/" + kTokenizerFile);
    if (!bytes.ok()) return bytes.status();
    if (absl::Status s = WriteFileAtomically(path, *bytes); !s.ok()) return s;
    return Tokenizer::Load(path);
  }
  const std::string corpus_path = work_dir + "/.tokenizer_corpus.txt";
  if (absl::Status s = write_corpus(corpus_path); !s.ok()) return s;
  const std::string tmp = work_dir + "/.tokenizer.tmp.model";
  absl::Status trained = Tokenizer::Train(corpus_path, tmp, train_options);
  fs::remove(corpus_path, ec);
  if (!trained.ok()) return trained;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return Tokenizer::Load(path);
}

}  // namespace tandem

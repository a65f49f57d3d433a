#include "trainer/data/text_dataset.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <system_error>
#include <unordered_set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/confined_open.h"
#include "models/model_dir.h"
#include "models/text/text_stream.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

// Cuts one file's text into documents (see the header), dropping empty ones.
void SplitDocuments(const std::string& text, std::vector<std::string>* docs) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  const bool fortune_format =
      std::any_of(lines.begin(), lines.end(), [](absl::string_view l) { return l == "%"; });
  std::string doc;
  auto flush = [&] {
    if (!doc.empty() && doc.find_first_not_of(" \t\r\n") != std::string::npos) {
      docs->push_back(std::move(doc));
    }
    doc.clear();
  };
  for (size_t i = 0; i < lines.size(); ++i) {
    absl::string_view line = lines[i];
    const bool boundary = fortune_format ? line == "%" : line.find_first_not_of(" \t\r") ==
                                                             absl::string_view::npos;
    if (boundary) {
      flush();
      continue;
    }
    absl::StrAppend(&doc, line);
    if (i + 1 < lines.size()) doc.push_back('\n');
  }
  flush();
}

}  // namespace

absl::StatusOr<TextCorpus> LoadTextCorpus(const std::string& path, double holdout_fraction,
                                          const std::string& root) {
  std::error_code ec;
  std::vector<std::string> files;
  if (fs::is_directory(path, ec)) {
    for (const auto& e : fs::recursive_directory_iterator(path, ec)) {
      if (e.is_regular_file() && e.path().extension() == ".txt") files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("dataset folder ", path, " has no .txt files"));
    }
  } else if (fs::is_regular_file(path, ec)) {
    files.push_back(path);
  } else {
    return absl::NotFoundError(absl::StrCat("dataset ", path, " does not exist"));
  }
  std::vector<std::string> docs;
  for (const std::string& f : files) {
    absl::StatusOr<std::string> text = ReadFileBeneath(root, f);
    if (!text.ok()) return text.status();
    if (!IsValidUtf8(*text)) {
      return absl::InvalidArgumentError(absl::StrCat("dataset file ", f, " is not UTF-8 text"));
    }
    SplitDocuments(*text, &docs);
  }
  if (holdout_fraction <= 0 || holdout_fraction >= 1) holdout_fraction = 0.1;
  const int64_t every = std::max<int64_t>(2, std::llround(1.0 / holdout_fraction));
  TextCorpus corpus;
  for (size_t i = 0; i < docs.size(); ++i) {
    const bool held = (static_cast<int64_t>(i) + 1) % every == 0;
    (held ? corpus.heldout_bytes : corpus.train_bytes) += static_cast<int64_t>(docs[i].size());
    (held ? corpus.heldout : corpus.train).push_back(std::move(docs[i]));
  }
  if (corpus.train.empty() || corpus.heldout.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset ", path, " has ", corpus.train.size() + corpus.heldout.size(),
        " documents: too few to hold out every ", every, "th for evaluation (need at least ",
        every, "; documents are separated by \"%\" lines or blank lines)"));
  }
  return corpus;
}

absl::Status WriteTokenizerCorpus(const TextCorpus& corpus, const std::string& path) {
  std::string out;
  for (const std::string& doc : corpus.train) {
    absl::StrAppend(&out, doc);
    if (doc.empty() || doc.back() != '\n') out.push_back('\n');
  }
  return WriteFileAtomically(path, out);
}

int MinimumVocabSize(const TextCorpus& corpus) {
  constexpr size_t kMaxLineBytes = 16384;  // the tokenizer trainer's max_sentence_length
  std::unordered_set<uint32_t> chars;
  for (const std::string& doc : corpus.train) {
    for (absl::string_view line : absl::StrSplit(doc, '\n')) {
      if (line.size() > kMaxLineBytes) continue;
      // Code points of valid UTF-8 (the corpus is checked when loaded).
      for (size_t i = 0; i < line.size();) {
        const unsigned char c = static_cast<unsigned char>(line[i]);
        const size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : 4;
        uint32_t cp = 0;
        for (size_t k = 0; k < len && i + k < line.size(); ++k) {
          cp = (cp << 8) | static_cast<unsigned char>(line[i + k]);
        }
        chars.insert(cp);
        i += len;
      }
    }
  }
  return static_cast<int>(chars.size()) + kTokenizerMetaPieces;
}

std::vector<int32_t> TokenizeDocuments(const Tokenizer& tokenizer,
                                       const std::vector<std::string>& documents) {
  std::vector<int32_t> out;
  for (const std::string& doc : documents) {
    out.push_back(tokenizer.bos_id());
    std::vector<int32_t> ids = tokenizer.Encode(doc);
    out.insert(out.end(), ids.begin(), ids.end());
  }
  return out;
}

std::vector<HeldOutWindow> HeldOutWindows(const std::vector<int32_t>& tokens, int32_t bos_id,
                                          int64_t context) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  std::vector<HeldOutWindow> out;
  int64_t begin = 0;  // the current document's first token (its BOS, but for a headless stream)
  while (begin + 1 < n) {
    int64_t end = begin + 1;  // the next document's BOS, or the end of the stream
    while (end < n && tokens[end] != bos_id) ++end;
    // Predictions of tokens begin + 1 ... last: the document and the BOS that ends it.
    const int64_t predictions = std::min(end, n - 1) - begin;
    out.push_back({begin, std::min(predictions, context), 0});
    for (int64_t scored = context; scored < predictions;) {
      const int64_t upto = std::min(predictions, scored + std::max<int64_t>(1, context / 2));
      out.push_back({begin + upto - context, context, scored - (upto - context)});
      scored = upto;
    }
    begin = end;
  }
  return out;
}

}  // namespace tandem

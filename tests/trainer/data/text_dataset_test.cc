// Text datasets for LLM training (trainer/text_dataset.h): cutting files into documents ("%"
// lines or blank-line paragraphs), the held-out split, folders of .txt files, and the errors.
#include "trainer/data/text_dataset.h"

#include <unistd.h>

#include <filesystem>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "models/model_dir.h"
#include "models/text/sentencepiece_tokenizer.h"
#include "models/text/tokenizer.h"
#include "tests/testing/base/files.h"

namespace tandem {

// gtest's printer finds it by argument-dependent lookup: in HeldOutWindow's namespace.
void PrintTo(const HeldOutWindow& w, std::ostream* os) {
  *os << "{" << w.start << ", " << w.len << ", " << w.first_scored << "}";
}

namespace {

namespace fs = std::filesystem;

int64_t Bytes(const std::vector<std::string>& docs) {
  int64_t n = 0;
  for (const std::string& d : docs) n += static_cast<int64_t>(d.size());
  return n;
}

class TextDatasetTest : public testing::TempDirTest {
 protected:
  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = dir_ + "/" + name;
    fs::create_directories(fs::path(path).parent_path());
    EXPECT_TRUE(WriteFileAtomically(path, text).ok()) << path;
    return path;
  }
};

// "doc 0" .. "doc n-1", each a line of its own, "%" lines between (fortune format).
std::string Fortunes(int n, const std::string& prefix = "doc ") {
  std::string text;
  for (int i = 0; i < n; ++i) absl::StrAppend(&text, prefix, i, "\n%\n");
  return text;
}

TEST_F(TextDatasetTest, PercentLinesSeparateDocumentsAndEveryTenthIsHeldOut) {
  absl::StatusOr<TextCorpus> c = LoadTextCorpus(Write("f.txt", Fortunes(25)), 0.1);
  ASSERT_TRUE(c.ok()) << c.status();
  // Documents 9 and 19 (the 10th and 20th) are held out; the rest train, in file order.
  EXPECT_EQ(c->heldout, (std::vector<std::string>{"doc 9\n", "doc 19\n"}));
  std::vector<std::string> train;
  for (int i = 0; i < 25; ++i) {
    if (i != 9 && i != 19) train.push_back(absl::StrCat("doc ", i, "\n"));
  }
  EXPECT_EQ(c->train, train);
  EXPECT_EQ(c->train_bytes, Bytes(c->train));
  EXPECT_EQ(c->heldout_bytes, Bytes(c->heldout));
}

TEST_F(TextDatasetTest, FortuneDocumentsKeepTheirLinesAndEmptyOnesAreDropped) {
  // Multi-line documents; a "%" inside a line is text; blank lines inside a fortune-format
  // document are kept; empty or blank-only documents between "%" lines are dropped; the last
  // document needs no closing "%".
  std::string text =
      "first line\nsecond line, 50% off\n%\n%\n  \n%\nafter a blank\n\nstill it\n%\n";
  for (int i = 0; i < 8; ++i) absl::StrAppend(&text, "filler ", i, "\n%\n");
  absl::StrAppend(&text, "last, unterminated");
  absl::StatusOr<TextCorpus> c = LoadTextCorpus(Write("f.txt", text), 0.1);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->train.size() + c->heldout.size(), 11u);
  EXPECT_EQ(c->train[0], "first line\nsecond line, 50% off\n");
  EXPECT_EQ(c->train[1], "after a blank\n\nstill it\n");
  EXPECT_EQ(c->train[2], "filler 0\n");
  EXPECT_EQ(c->heldout, (std::vector<std::string>{"filler 7\n"}));  // the 10th document
  EXPECT_EQ(c->train.back(), "last, unterminated");
}

TEST_F(TextDatasetTest, WithoutPercentLinesBlankLinesSeparateParagraphs) {
  std::string text = "one a\none b\n\n";
  for (int i = 2; i <= 12; ++i) {
    // Separators of one or more blank lines, some holding only spaces, tabs or a CR.
    absl::StrAppend(&text, "para ", i, i % 3 == 0 ? "\n \t\n\r\n\n" : "\n\n");
  }
  absl::StatusOr<TextCorpus> c = LoadTextCorpus(Write("p.txt", text), 0.1);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->train.size() + c->heldout.size(), 12u);
  EXPECT_EQ(c->train[0], "one a\none b\n");
  EXPECT_EQ(c->train[1], "para 2\n");
  EXPECT_EQ(c->train[2], "para 3\n");
  EXPECT_EQ(c->heldout, (std::vector<std::string>{"para 10\n"}));
  EXPECT_EQ(c->train.back(), "para 12\n");
}

TEST_F(TextDatasetTest, HoldoutFractionSetsTheStride) {
  const std::string path = Write("f.txt", Fortunes(12));
  absl::StatusOr<TextCorpus> quarter = LoadTextCorpus(path, 0.25);  // every 4th
  ASSERT_TRUE(quarter.ok()) << quarter.status();
  EXPECT_EQ(quarter->heldout, (std::vector<std::string>{"doc 3\n", "doc 7\n", "doc 11\n"}));
  EXPECT_EQ(quarter->train.size(), 9u);
  absl::StatusOr<TextCorpus> half = LoadTextCorpus(path, 0.5);  // every 2nd
  ASSERT_TRUE(half.ok()) << half.status();
  EXPECT_EQ(half->heldout.size(), 6u);
  EXPECT_EQ(half->heldout.front(), "doc 1\n");
  EXPECT_EQ(half->train.front(), "doc 0\n");
  // Out of range: the default, every 10th.
  for (double f : {0.0, -1.0, 1.0}) {
    absl::StatusOr<TextCorpus> c = LoadTextCorpus(path, f);
    ASSERT_TRUE(c.ok()) << f << ": " << c.status();
    EXPECT_EQ(c->heldout, (std::vector<std::string>{"doc 9\n"})) << f;
  }
}

TEST_F(TextDatasetTest, FolderReadsTxtFilesInNameOrder) {
  // Written out of order; b.txt uses paragraphs, the others the fortune format; other
  // extensions are ignored; subfolders count.
  Write("texts/b.txt", "b0\n\nb1\n\nb2\n");
  Write("texts/a.txt", Fortunes(4, "a"));
  Write("texts/notes.md", Fortunes(50, "ignored"));
  Write("texts/sub/c.txt", Fortunes(4, "c"));
  absl::StatusOr<TextCorpus> c = LoadTextCorpus(dir_ + "/texts", 0.1);
  ASSERT_TRUE(c.ok()) << c.status();
  // a0 a1 a2 a3 b0 b1 b2 c0 c1 [c2] c3: the 10th, c2, is held out.
  EXPECT_EQ(c->train, (std::vector<std::string>{"a0\n", "a1\n", "a2\n", "a3\n", "b0\n", "b1\n",
                                                "b2\n", "c0\n", "c1\n", "c3\n"}));
  EXPECT_EQ(c->heldout, (std::vector<std::string>{"c2\n"}));
}

TEST_F(TextDatasetTest, NonUtf8IsInvalidArgument) {
  std::string text = Fortunes(20);
  text.insert(10, "caf\xe9 \xff\xfe");  // Latin-1, not UTF-8
  absl::StatusOr<TextCorpus> c = LoadTextCorpus(Write("latin1.txt", text), 0.1);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("UTF-8"), absl::string_view::npos) << c.status();
  // One bad file spoils a folder.
  Write("mixed/a.txt", Fortunes(20));
  Write("mixed/b.txt", "\xc3\x28\n");
  EXPECT_EQ(LoadTextCorpus(dir_ + "/mixed", 0.1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(TextDatasetTest, TooFewDocumentsIsInvalidArgument) {
  absl::StatusOr<TextCorpus> nine = LoadTextCorpus(Write("nine.txt", Fortunes(9)), 0.1);
  EXPECT_EQ(nine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(nine.status().message().find("9 documents"), absl::string_view::npos)
      << nine.status();
  // Ten is enough: one held out.
  absl::StatusOr<TextCorpus> ten = LoadTextCorpus(Write("ten.txt", Fortunes(10)), 0.1);
  ASSERT_TRUE(ten.ok()) << ten.status();
  EXPECT_EQ(ten->heldout.size(), 1u);
  EXPECT_EQ(ten->train.size(), 9u);
  // Empty and blank-only files hold no documents at all.
  EXPECT_EQ(LoadTextCorpus(Write("empty.txt", ""), 0.1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadTextCorpus(Write("blank.txt", "\n \n%\n\t\n"), 0.1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(TextDatasetTest, FolderWithoutTxtFilesIsInvalidArgument) {
  Write("none/readme.md", Fortunes(20));
  EXPECT_EQ(LoadTextCorpus(dir_ + "/none", 0.1).status().code(),
            absl::StatusCode::kInvalidArgument);
  fs::create_directories(dir_ + "/empty");
  EXPECT_EQ(LoadTextCorpus(dir_ + "/empty", 0.1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(TextDatasetTest, MissingPathIsNotFound) {
  EXPECT_EQ(LoadTextCorpus(dir_ + "/nope.txt", 0.1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(LoadTextCorpus(dir_ + "/no/such/folder", 0.1).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(TextDatasetTest, ASymlinkLeadingOutOfTheRootFailsAtTheOpen) {
  Write("outside.txt", Fortunes(20));
  Write("data/texts/a.txt", Fortunes(20));
  fs::create_symlink(dir_ + "/outside.txt", dir_ + "/data/texts/b.txt");
  const std::string root = dir_ + "/data";
  EXPECT_TRUE(LoadTextCorpus(root + "/texts", 0.1).ok()) << "unconfined, the link is followed";
  absl::StatusOr<TextCorpus> corpus = LoadTextCorpus(root + "/texts", 0.1, root);
  EXPECT_EQ(corpus.status().code(), absl::StatusCode::kPermissionDenied) << corpus.status();
  // A file swapped for a link after it was checked is caught the same way.
  fs::remove(dir_ + "/data/texts/b.txt");
  ASSERT_TRUE(LoadTextCorpus(root + "/texts", 0.1, root).ok());
  fs::remove(dir_ + "/data/texts/a.txt");
  fs::create_symlink(dir_ + "/outside.txt", dir_ + "/data/texts/a.txt");
  EXPECT_EQ(LoadTextCorpus(root + "/texts", 0.1, root).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(TextDatasetTest, MinimumVocabSizeIsExactlyWhatTheTokenizerTrainerNeeds) {
  // 20 documents over 30 distinct characters, one (the euro sign) multi-byte; a character only
  // in held-out documents does not count.
  std::vector<std::string> alphabet;
  for (char c : std::string("abcdefghijklmnopqrstuvwxyz .!")) alphabet.push_back(std::string(1, c));
  alphabet.push_back("\xe2\x82\xac");
  std::string text;
  for (int i = 0; i < 20; ++i) {
    for (size_t k = 0; k < alphabet.size(); ++k) text += alphabet[(k + i) % alphabet.size()];
    if ((i + 1) % 10 == 0) text += "Q";  // every 10th document is held out
    text += "\n%\n";
  }
  absl::StatusOr<TextCorpus> corpus = LoadTextCorpus(Write("abc.txt", text), 0.1);
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  const int needed = MinimumVocabSize(*corpus);
  EXPECT_EQ(needed, 30 + kTokenizerMetaPieces);
  ASSERT_TRUE(WriteTokenizerCorpus(*corpus, Path("corpus.txt")).ok());
  TokenizerTrainOptions options;
  options.hard_vocab_limit = false;
  options.num_threads = 1;
  options.vocab_size = needed;
  EXPECT_TRUE(SentencePieceTokenizer::Train(Path("corpus.txt"), Path("ok.model"), options).ok());
  options.vocab_size = needed - 1;
  absl::Status s = SentencePieceTokenizer::Train(Path("corpus.txt"), Path("small.model"), options);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("use a larger vocab_size"), std::string::npos) << s;
}

TEST_F(TextDatasetTest, TokenizerCorpusHoldsTheTrainingDocumentsOnly) {
  absl::StatusOr<TextCorpus> c = LoadTextCorpus(Write("f.txt", Fortunes(11) + "tail"), 0.1);
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string out = dir_ + "/corpus.txt";
  ASSERT_TRUE(WriteTokenizerCorpus(*c, out).ok());
  std::string want;
  for (int i = 0; i < 11; ++i) {
    if (i != 9) absl::StrAppend(&want, "doc ", i, "\n");
  }
  absl::StrAppend(&want, "tail\n");  // a newline is added where a document lacks one
  EXPECT_EQ(*ReadFile(out), want);
}

// B = BOS (1); three documents of 2, 5 and 1 tokens; context 3.
TEST(HeldOutWindowsTest, EachDocumentFromItsBosAndLongOnesInHalfScoredWindows) {
  const std::vector<int32_t> tokens = {1, 10, 11, 1, 20, 21, 22, 23, 24, 1, 30};
  const std::vector<HeldOutWindow> want = {
      {0, 3, 0},  // B 10 11 -> 10 11 B: the first document and its end
      {3, 3, 0},  // B 20 21 -> 20 21 22
      {4, 3, 2},  // 20 21 22 -> 23 (only the last scored: the rest is context)
      {5, 3, 2},  // -> 24
      {6, 3, 2},  // -> B, the second document's end
      {9, 1, 0},  // B -> 30: the last document has no BOS after it
  };
  EXPECT_EQ(HeldOutWindows(tokens, 1, 3), want);
}

// Over random documents and contexts: every token but the first is predicted exactly once, no
// window is longer than the context, and a scored prediction sees its whole document so far or
// at least half the context.
TEST(HeldOutWindowsTest, EveryTokenButTheFirstIsScoredOnceWithItsContext) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int32_t> tokens;
    std::vector<int64_t> doc_start;  // per token: where its document starts
    const int docs = 1 + static_cast<int>(rng() % 6);
    for (int d = 0; d < docs; ++d) {
      const int64_t start = static_cast<int64_t>(tokens.size());
      const int len = 1 + static_cast<int>(rng() % 40);
      for (int k = 0; k < len; ++k) {
        tokens.push_back(k == 0 ? 1 : 2 + static_cast<int32_t>(rng() % 50));
        doc_start.push_back(start);
      }
    }
    const int64_t context = 1 + static_cast<int64_t>(rng() % 16);
    std::vector<int> scored(tokens.size(), 0);
    for (const HeldOutWindow& w : HeldOutWindows(tokens, 1, context)) {
      ASSERT_GE(w.len, 1);
      ASSERT_LE(w.len, context);
      ASSERT_LE(w.start + w.len, static_cast<int64_t>(tokens.size()) - 1);
      for (int64_t k = w.first_scored; k < w.len; ++k) {
        const int64_t target = w.start + k + 1;
        ++scored[target];
        // Context: tokens w.start .. w.start + k. The target's document (or, for a BOS target,
        // the document it ends) starts at doc_start[target - 1].
        const int64_t own = target - doc_start[target - 1];
        EXPECT_GE(k + 1, std::min(own, (context + 1) / 2)) << "context " << context;
        EXPECT_GE(w.start, doc_start[target - 1]) << "a window reaches into another document";
      }
    }
    EXPECT_EQ(scored[0], 0);
    for (size_t i = 1; i < scored.size(); ++i) EXPECT_EQ(scored[i], 1) << "token " << i;
  }
}

}  // namespace
}  // namespace tandem

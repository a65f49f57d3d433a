// The llama2.c tokenizer (models/text/llama2c_tokenizer.h): the tokenizer.bin format, encoding id
// for id as the reference of run.c's encode (tests/testing/base/run_c_reference.h) on synthetic
// and hand-made vocabularies, run.c's decoding, and SentencePiece models exported for run.c:
// run.c's encoder on the exported pieces and scores reproduces SentencePiece's tokens on the
// corpus the model was trained on, and differs where the header says.
#include "models/text/llama2c_tokenizer.h"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "models/text/sentencepiece_tokenizer.h"
#include "models/text/text_stream.h"
#include "tests/testing/base/files.h"
#include "tests/testing/base/matchers.h"
#include "tests/testing/base/run_c_reference.h"
#include "tests/testing/base/text_corpus.h"

namespace tandem {
namespace {

using testing::Contains;
using testing::RunCTokenizer;

std::unique_ptr<Llama2cTokenizer> FromVocab(Llama2cVocab vocab) {
  absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> t = Llama2cTokenizer::FromVocab(vocab);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

std::vector<int32_t> ToIds(const std::vector<int>& v) { return {v.begin(), v.end()}; }

// Texts that exercise every path of the encoder: empty, spaces only, merges, punctuation, code
// points in the vocabulary (é, ü, 日) and outside it (byte fallback: ñ, 本, an emoji, control
// characters), long runs, and lines of the synthetic vocabulary's own text.
std::vector<std::string> Probes() {
  std::vector<std::string> out = {
      "",
      " ",
      "   ",
      "a",
      "Once upon a time",
      "Once upon a time, there was a little girl named Lily.",
      " leading and trailing spaces ",
      "Lily said, \"Look, Max! It is so pretty!\"",
      "caf\xC3\xA9 \xC3\xBC"
      "ber \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x99\x82 ma\xC3\xB1"
      "ana",
      "tabs\tand\nnewlines\r\n",
      "1234567890 0.5 -3e7",
      "the the the the the the the the",
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
  };
  // Pseudo-random strings over the vocabulary's characters and a few outside it.
  const std::vector<std::string> alphabet = {"a",        "e",  "t", " ", "h",        "o",
                                             ".",        "L",  "y", "!", "\xC3\xA9", "\xE6\x97\xA5",
                                             "\xC3\xB1", "\n", "x"};
  uint64_t x = 42;
  for (int s = 0; s < 200; ++s) {
    std::string text;
    const int n = 1 + s % 40;
    for (int i = 0; i < n; ++i) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      text += alphabet[x % alphabet.size()];
    }
    out.push_back(text);
  }
  return out;
}

void ExpectEncodesLikeRunC(const Llama2cVocab& vocab) {
  std::unique_ptr<Llama2cTokenizer> tok = FromVocab(vocab);
  ASSERT_NE(tok, nullptr);
  RunCTokenizer ref(SerializeLlama2cVocab(vocab), static_cast<int>(vocab.pieces.size()));
  for (const std::string& text : Probes()) {
    EXPECT_EQ(tok->Encode(text), ToIds(ref.Encode(text, false, false))) << "\"" << text << "\"";
  }
}

TEST(Llama2cTokenizerTest, EncodesAsRunCDoes) {
  ExpectEncodesLikeRunC(SyntheticLlama2cVocab(512, 1));
  ExpectEncodesLikeRunC(SyntheticLlama2cVocab(4000, 2));
}

// A vocabulary built to hit run.c's corner cases: equal scores (the leftmost pair wins), a
// duplicated piece (resolved as run.c's bsearch over its sorted copy does), a piece with a NUL
// inside (run.c sees it up to the NUL), merges scoring -1e10 or below (never made), and the
// order of merges deciding the result.
TEST(Llama2cTokenizerTest, EncodesRunCsCornerCasesAlike) {
  Llama2cVocab v = SyntheticLlama2cVocab(kLlama2cMinVocab, 0);
  auto add = [&](std::string piece, float score) {
    v.max_token_length = std::max<uint32_t>(v.max_token_length, piece.size());
    v.pieces.push_back(std::move(piece));
    v.scores.push_back(score);
  };
  for (const char* c : {" ", "a", "b", "c", "d"}) add(c, -100.0f);
  add("ab", 1.0f);
  add("bc", 1.0f);  // ties with "ab": "abc" merges as ab|c
  add("cd", 0.5f);
  add("abc", 2.0f);
  add(" a", 3.0f);
  add(" a", 7.0f);                    // a duplicate with another score
  add("dd", -1e10f);                  // never merged
  add(std::string("d\0x", 3), 0.0f);  // run.c sees "d": a duplicate of "d" too
  add("cdcd", 5.0f);
  ExpectEncodesLikeRunC(v);
  std::unique_ptr<Llama2cTokenizer> tok = FromVocab(v);
  RunCTokenizer ref(SerializeLlama2cVocab(v), static_cast<int>(v.pieces.size()));
  for (const char* text : {"abc", "bcab", "abcd", "dddd", "cdcd", "a a abc", "dcdcdcd"}) {
    EXPECT_EQ(tok->Encode(text), ToIds(ref.Encode(text, false, false))) << text;
  }
}

TEST(Llama2cTokenizerTest, DecodesAsRunCPrints) {
  std::unique_ptr<Llama2cTokenizer> tok = FromVocab(SyntheticLlama2cVocab(512, 1));
  RunCTokenizer ref(tok->Serialized(), tok->vocab_size());
  // Printable text: the pieces run.c prints after BOS, concatenated, are Decode's text, and
  // that is the text encoded.
  for (const std::string& text :
       {std::string("Once upon a time, there was Max."), std::string(" two  spaces"),
        std::string("tabs\tand\nnewlines")}) {
    const std::vector<int32_t> ids = tok->Encode(text);
    std::string printed;
    int prev = kLlama2cBosId;
    for (int32_t id : ids) {
      printed += RunCTokenizer::SafePrintf(ref.Decode(prev, id));
      prev = id;
    }
    EXPECT_EQ(tok->Decode(ids), printed);
    EXPECT_EQ(tok->Decode(ids), text);
  }
  // Byte tokens come out as the bytes; a multi-byte character made of them is whole (run.c's
  // safe_printf would drop each byte), and a dangling one is U+FFFD.
  const std::vector<int32_t> nihon = tok->Encode("\xE6\x9C\xAC");  // 本: not in the vocabulary
  EXPECT_EQ(nihon, (std::vector<int32_t>{tok->Encode(" ")[0], 0xE6 + 3, 0x9C + 3, 0xAC + 3}));
  EXPECT_EQ(tok->Decode(nihon), "\xE6\x9C\xAC");
  EXPECT_EQ(tok->Decode({0xE6 + 3, 0x9C + 3}), "\xEF\xBF\xBD\xEF\xBF\xBD");
  // One leading space goes after BOS, wherever BOS is; special ids print nothing.
  const std::vector<int32_t> a = tok->Encode("a");  // the dummy prefix merged: " a"
  ASSERT_EQ(a.size(), 1u);
  const int32_t space_a = a[0];
  EXPECT_EQ(tok->IdToPiece(space_a), " a");
  EXPECT_EQ(tok->Decode({space_a, space_a}), "a a");
  EXPECT_EQ(tok->Decode({space_a, kLlama2cBosId, space_a, kLlama2cEosId, kLlama2cUnkId, space_a}),
            "aa a");
  EXPECT_TRUE(tok->IsSpecial(kLlama2cBosId));
  EXPECT_TRUE(tok->IsSpecial(-1));
  EXPECT_TRUE(tok->IsSpecial(tok->vocab_size()));
  EXPECT_FALSE(tok->IsSpecial(space_a));
  EXPECT_FALSE(tok->IsSpecial(3));  // <0x00>
}

TEST(Llama2cTokenizerTest, FileRoundTripsAndBadFilesAreRefused) {
  const Llama2cVocab vocab = SyntheticLlama2cVocab(600, 3);
  const std::string bytes = SerializeLlama2cVocab(vocab);
  absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> tok = Llama2cTokenizer::FromSerialized(bytes);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 600);
  EXPECT_EQ((*tok)->Serialized(), bytes);
  EXPECT_EQ((*tok)->IdToPiece(3), "<0x00>");
  EXPECT_EQ((*tok)->Score(600), 0.0f);

  auto code_and = [](absl::string_view b, const char* needle) {
    absl::Status s = Llama2cTokenizer::FromSerialized(b).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(Contains(s.message(), needle)) << s;
  };
  code_and("ab", "shorter than its 4-byte header");
  code_and(absl::string_view(bytes).substr(0, bytes.size() - 1), "cut short");
  Llama2cVocab small = vocab;
  small.pieces.resize(100);
  small.scores.resize(100);
  code_and(SerializeLlama2cVocab(small), "at least 259 pieces");
  std::string zero = bytes.substr(0, 4);
  const float score = 0;
  const int32_t len = 0;
  zero.append(reinterpret_cast<const char*>(&score), 4)
      .append(reinterpret_cast<const char*>(&len), 4);
  code_and(zero, "token 0 has length 0");
  Llama2cVocab longer = vocab;
  longer.max_token_length = 3;
  code_and(SerializeLlama2cVocab(longer), "longer than the max_token_length 3");
  EXPECT_EQ(Llama2cTokenizer::Load("/nonexistent/tokenizer.bin").status().code(),
            absl::StatusCode::kNotFound);
}

// ---- SentencePiece models for run.c --------------------------------------------------------

class SentencePieceExportTest : public testing::TempDirTest {
 protected:
  // Trains a BPE model of `vocab` pieces on `corpus` (as tandem's trainer does) and converts it.
  void Train(const std::string& corpus, int vocab) {
    const std::string corpus_path = Path("corpus.txt");
    testing::WriteAll(corpus_path, corpus);
    TokenizerTrainOptions options;
    options.vocab_size = vocab;
    options.num_threads = 2;
    const std::string model = Path("tokenizer.model");
    ASSERT_TRUE(SentencePieceTokenizer::Train(corpus_path, model, options).ok());
    absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> sp =
        SentencePieceTokenizer::Load(model);
    ASSERT_TRUE(sp.ok()) << sp.status();
    sp_ = *std::move(sp);
    absl::StatusOr<Llama2cVocab> vocab_for_run_c = Llama2cVocabFrom(*sp_, sp_->vocab_size());
    ASSERT_TRUE(vocab_for_run_c.ok()) << vocab_for_run_c.status();
    vocab_ = *vocab_for_run_c;
    run_c_ = FromVocab(vocab_);
    ASSERT_NE(run_c_, nullptr);
  }

  // Every line of `corpus` encodes to SentencePiece's ids; returns how many lines there were.
  int ExpectSameTokensOnEveryLine(const std::string& corpus) {
    int lines = 0, differ = 0;
    for (absl::string_view line : absl::StrSplit(corpus, '\n')) {
      ++lines;
      const std::vector<int32_t> want = sp_->Encode(line);
      if (run_c_->Encode(line) != want && ++differ <= 5) {
        ADD_FAILURE() << "\"" << line << "\"";
      }
    }
    EXPECT_EQ(differ, 0) << "of " << lines << " lines";
    return lines;
  }

  std::unique_ptr<SentencePieceTokenizer> sp_;
  Llama2cVocab vocab_;
  std::unique_ptr<Llama2cTokenizer> run_c_;
};

TEST_F(SentencePieceExportTest, RunCsEncoderReproducesSentencePieceOnItsCorpus) {
  const std::string corpus = testing::EnglishishCorpus();
  Train(corpus, 400);
  EXPECT_EQ(ExpectSameTokensOnEveryLine(corpus), 401);
  // llama2.c's tokenizer.py conventions, and the file as run.c itself reads it.
  EXPECT_EQ(vocab_.pieces[kLlama2cBosId], "\n<s>\n");
  EXPECT_EQ(vocab_.pieces[kLlama2cEosId], "\n</s>\n");
  EXPECT_EQ(vocab_.pieces[3 + 'A'], "<0x41>");
  EXPECT_EQ(vocab_.scores[300], sp_->Score(300));
  RunCTokenizer ref(SerializeLlama2cVocab(vocab_), sp_->vocab_size());
  for (const char* text : {"the quick brown fox jumps over the lazy dog.", "caf\xC3\xA9 12345"}) {
    EXPECT_EQ(ToIds(ref.Encode(text, false, false)), sp_->Encode(text)) << text;
    EXPECT_EQ(run_c_->Decode(sp_->Encode(text)), sp_->Decode(sp_->Encode(text)));
  }
  // Beyond the corpus: characters it never had go through byte fallback alike.
  for (const char* text : {"\xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x99\x82", "  two  spaces  "}) {
    EXPECT_EQ(run_c_->Encode(text), sp_->Encode(text)) << text;
  }
  // Where they differ: SentencePiece reads a literal U+2581 ("▁") in the text as a space;
  // run.c's pieces hold real spaces, so it falls back to the character's bytes.
  EXPECT_NE(run_c_->Encode("a\xE2\x96\x81"
                           "b"),
            sp_->Encode("a\xE2\x96\x81"
                        "b"));
}

// The demo's text model: a 1024-piece BPE on the fortunes (Debian's `fortunes`), every line.
TEST_F(SentencePieceExportTest, RunCsEncoderReproducesSentencePieceOnTheFortunes) {
  const std::filesystem::path dir = "/usr/share/games/fortunes";
  if (!std::filesystem::is_directory(dir)) GTEST_SKIP() << "no " << dir;
  std::string corpus;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string ext = entry.path().extension().string();
    if (!entry.is_regular_file() || ext == ".dat" || ext == ".u8") continue;
    const std::string text = testing::ReadAll(entry.path().string());
    if (IsValidUtf8(text)) corpus += text;
  }
  Train(corpus, 1024);
  EXPECT_GT(ExpectSameTokensOnEveryLine(corpus), 10000);
}

TEST(Llama2cVocabFromTest, PadsAndRefusesWhatRunCCannotUse) {
  std::unique_ptr<Llama2cTokenizer> tok = FromVocab(SyntheticLlama2cVocab(300, 1));
  absl::StatusOr<Llama2cVocab> padded = Llama2cVocabFrom(*tok, 310);
  ASSERT_TRUE(padded.ok()) << padded.status();
  ASSERT_EQ(padded->pieces.size(), 310u);
  EXPECT_EQ(padded->pieces[299], tok->IdToPiece(299));
  EXPECT_EQ(padded->pieces[305], "\xFF");
  std::unique_ptr<Llama2cTokenizer> reread = FromVocab(*padded);
  EXPECT_TRUE(reread->IsSpecial(305));
  EXPECT_EQ(reread->Decode({305}), "");
  RunCTokenizer ref(SerializeLlama2cVocab(*padded), 310);
  EXPECT_EQ(RunCTokenizer::SafePrintf(ref.Decode(10, 305)), "");  // run.c prints nothing either

  EXPECT_EQ(Llama2cVocabFrom(*tok, 299).status().code(), absl::StatusCode::kInvalidArgument);
  Llama2cVocab no_bytes = SyntheticLlama2cVocab(300, 1);
  no_bytes.pieces[3 + 'A'] = "A";
  absl::Status s = Llama2cVocabFrom(*FromVocab(no_bytes), 300).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(s.message(), "byte 65 as id 68")) << s;
}

}  // namespace
}  // namespace tandem

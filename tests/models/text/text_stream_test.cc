#include "models/text/text_stream.h"

#include <stdlib.h>

#include <cstdint>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "models/text/llama2c_tokenizer.h"
#include "models/text/sentencepiece_tokenizer.h"

namespace tandem {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

// Deterministic text for training: English-ish words (some accented), digits, spaces.
std::string Corpus() {
  static const char* const kWords[] = {"the",  "a",     "stream", "token", "text",  "hello",
                                       "world", "café", "naïve",  "über",  "stop",  "string",
                                       "end",  "of",    "and",    "to",    "model", "again"};
  constexpr int kNumWords = sizeof(kWords) / sizeof(kWords[0]);
  std::mt19937_64 rng(99);
  std::string corpus;
  for (int line = 0; line < 300; ++line) {
    const int words = 3 + static_cast<int>(rng() % 10);
    for (int w = 0; w < words; ++w) {
      if (w > 0) corpus += rng() % 8 == 0 ? "   " : " ";
      corpus += rng() % 10 == 0 ? std::to_string(rng() % 1000) : kWords[rng() % kNumWords];
    }
    corpus += ".\n";
  }
  return corpus;
}

// Every test runs on both tokenizer kinds: the SentencePiece model, and the same pieces and
// scores as a llama2.c tokenizer.bin (which decodes the same text).
class IncrementalDetokenizerTest : public ::testing::TestWithParam<TokenizerKind> {
 protected:
  static void SetUpTestSuite() {
    std::string dir = ::testing::TempDir() + "text_stream_test_XXXXXX";
    if (::mkdtemp(dir.data()) == nullptr) return;
    const std::string corpus = dir + "/corpus.txt";
    {
      std::ofstream out(corpus, std::ios::binary);
      out << Corpus();
    }
    TokenizerTrainOptions options;
    options.vocab_size = 320;
    options.num_threads = 1;
    if (!SentencePieceTokenizer::Train(corpus, dir + "/tokenizer.model", options).ok()) return;
    absl::StatusOr<std::unique_ptr<Tokenizer>> t =
        SentencePieceTokenizer::Load(dir + "/tokenizer.model");
    if (!t.ok()) return;
    absl::StatusOr<Llama2cVocab> vocab = Llama2cVocabFrom(**t, (*t)->vocab_size());
    if (!vocab.ok()) return;
    absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> llama2c =
        Llama2cTokenizer::FromVocab(*std::move(vocab));
    if (!llama2c.ok()) return;
    sentencepiece_ = t->release();
    llama2c_ = llama2c->release();
  }
  static void TearDownTestSuite() {
    delete sentencepiece_;
    delete llama2c_;
    sentencepiece_ = llama2c_ = nullptr;
  }
  void SetUp() override {
    tokenizer_ = GetParam() == TokenizerKind::kLlama2c ? llama2c_ : sentencepiece_;
    ASSERT_NE(tokenizer_, nullptr) << "tokenizer training failed";
  }

  // Streams `ids` one at a time; checks the pieces add up to Decode(ids) and returns them (the
  // last one is Flush()).
  std::vector<std::string> Stream(const std::vector<int32_t>& ids) const {
    IncrementalDetokenizer detok(tokenizer_);
    std::vector<std::string> chunks;
    std::string all;
    for (int32_t id : ids) {
      chunks.push_back(detok.Push(id));
      all += chunks.back();
    }
    chunks.push_back(detok.Flush());
    all += chunks.back();
    EXPECT_EQ(all, tokenizer_->Decode(ids));
    return chunks;
  }

  static Tokenizer* sentencepiece_;
  static Tokenizer* llama2c_;
  const Tokenizer* tokenizer_ = nullptr;
};

Tokenizer* IncrementalDetokenizerTest::sentencepiece_ = nullptr;
Tokenizer* IncrementalDetokenizerTest::llama2c_ = nullptr;

INSTANTIATE_TEST_SUITE_P(BothKinds, IncrementalDetokenizerTest,
                         ::testing::Values(TokenizerKind::kSentencePiece, TokenizerKind::kLlama2c),
                         [](const ::testing::TestParamInfo<TokenizerKind>& info) {
                           return std::string(TokenizerKindName(info.param));
                         });

TEST_P(IncrementalDetokenizerTest, KeepsSpacesAtEveryWindowBoundary) {
  for (const std::string text :
       {"hello world again", " hello", "  two leading", "hello   world", "a b c d e f g",
        "trailing   ", "the end.\n\nthe  end .", "   "}) {
    std::vector<std::string> chunks = Stream(tokenizer_->Encode(text));
    std::string joined;
    for (const std::string& c : chunks) joined += c;
    EXPECT_EQ(joined, text);
    EXPECT_EQ(chunks.back(), "") << "nothing should be held back for complete text";
  }
}

TEST_P(IncrementalDetokenizerTest, HoldsBackPartialCharacters) {
  // "日" is three byte-fallback pieces: nothing until the last one arrives.
  IncrementalDetokenizer detok(tokenizer_);
  std::vector<int32_t> hello = tokenizer_->Encode("hello");
  std::string out;
  for (int32_t id : hello) out += detok.Push(id);
  EXPECT_EQ(out, "hello");
  EXPECT_EQ(detok.Push(3 + 0xE6), "");
  EXPECT_EQ(detok.Push(3 + 0x97), "");
  EXPECT_EQ(detok.Push(3 + 0xA5), "日");
  // A 4-byte emoji, then a piece with a leading space.
  EXPECT_EQ(detok.Push(3 + 0xF0), "");
  EXPECT_EQ(detok.Push(3 + 0x9F), "");
  EXPECT_EQ(detok.Push(3 + 0x99), "");
  EXPECT_EQ(detok.Push(3 + 0x82), "🙂");
  std::string rest;
  // Encode adds a dummy-prefix "▁", which mid-stream renders as the space.
  for (int32_t id : tokenizer_->Encode("world")) rest += detok.Push(id);
  EXPECT_EQ(rest, " world");
  EXPECT_EQ(detok.Flush(), "");
}

TEST_P(IncrementalDetokenizerTest, FlushReleasesADanglingByte) {
  std::vector<int32_t> ids = tokenizer_->Encode("end");
  ids.push_back(3 + 0xE6);  // generation stopped mid-character
  std::vector<std::string> chunks = Stream(ids);
  EXPECT_EQ(chunks[chunks.size() - 2], "");
  EXPECT_EQ(chunks.back(), kReplacement);
}

TEST_P(IncrementalDetokenizerTest, SpecialIdsInTheMiddle) {
  std::vector<int32_t> ids = {1};  // BOS first: the first real piece still loses its space
  for (int32_t id : tokenizer_->Encode("hello world")) ids.push_back(id);
  ids.push_back(2);
  ids.push_back(0);
  for (int32_t id : tokenizer_->Encode("again")) ids.push_back(id);  // "▁again": " again"
  ids.push_back(tokenizer_->vocab_size() + 3);  // out of range
  std::vector<std::string> chunks = Stream(ids);
  std::string joined;
  for (const std::string& c : chunks) joined += c;
  EXPECT_EQ(joined, "hello world again");
}

TEST_P(IncrementalDetokenizerTest, RealisticTextStreamsValidUtf8Chunks) {
  const std::string texts[] = {
      "naïve café — 日本語 🙂 and  again",
      "  über   déjà-vu 🙂🙂 ",
      "end of the stream\n\n日本",
  };
  for (const std::string& text : texts) {
    std::vector<int32_t> ids = tokenizer_->Encode(text);
    std::string joined;
    for (const std::string& chunk : Stream(ids)) {
      EXPECT_TRUE(IsValidUtf8(chunk)) << "chunk splits a character in \"" << text << "\"";
      joined += chunk;
    }
    EXPECT_EQ(joined, text);
  }
}

// Random id sequences, biased towards byte-fallback pieces and spaces: whatever the model
// generates, the stream adds up to Decode(all), and when Decode(all) is valid UTF-8 every chunk
// is too (no character is ever split across chunks).
TEST_P(IncrementalDetokenizerTest, RandomSequencesMatchFullDecode) {
  std::mt19937_64 rng(1234);
  const int vocab = tokenizer_->vocab_size();
  const std::vector<int32_t> interesting = {
      3 + 0x20, 3 + 0xC3, 3 + 0xA9, 3 + 0xE6, 3 + 0x97, 3 + 0xA5, 3 + 0xF0, 3 + 0x9F, 3 + 0x99,
      3 + 0x82, 3 + 0x80, 3 + 0xFF, 3 + 0x41, 0,        1,        2};
  for (int trial = 0; trial < 400; ++trial) {
    const int length = 1 + static_cast<int>(rng() % 48);
    std::vector<int32_t> ids;
    for (int i = 0; i < length; ++i) {
      switch (rng() % 4) {
        case 0:
          ids.push_back(interesting[rng() % interesting.size()]);
          break;
        case 1:
          ids.push_back(3 + static_cast<int32_t>(rng() % 256));  // any byte
          break;
        default:
          ids.push_back(static_cast<int32_t>(rng() % vocab));  // anything, learned mostly
      }
    }
    std::vector<std::string> chunks = Stream(ids);
    if (IsValidUtf8(tokenizer_->Decode(ids))) {
      for (const std::string& chunk : chunks) {
        EXPECT_TRUE(IsValidUtf8(chunk)) << "trial " << trial;
      }
    }
    if (HasFailure()) break;
  }
}

// A stream that continues a prompt: the prompt's text and the streamed text add up to the decode
// of the whole, the first generated piece keeping its space; after BOS alone it loses it.
TEST_P(IncrementalDetokenizerTest, ContextKeepsTheFirstPiecesSpace) {
  const std::vector<int32_t> ids = tokenizer_->Encode("hello world again, and again");
  for (size_t split = 0; split <= ids.size(); ++split) {
    std::vector<int32_t> context = {1};
    context.insert(context.end(), ids.begin(), ids.begin() + split);
    IncrementalDetokenizer detok(tokenizer_, context);
    std::string streamed;
    for (size_t i = split; i < ids.size(); ++i) streamed += detok.Push(ids[i]);
    streamed += detok.Flush();
    EXPECT_EQ(tokenizer_->Decode(context) + streamed, "hello world again, and again")
        << "split " << split;
  }
}

TEST_P(IncrementalDetokenizerTest, EmptyStream) {
  IncrementalDetokenizer detok(tokenizer_);
  EXPECT_EQ(detok.Flush(), "");
}

// ---- StopStringFilter ------------------------------------------------------------------------

TEST(StopStringFilterTest, NoStopsPassesEverythingThrough) {
  StopStringFilter f({});
  bool stopped = true;
  EXPECT_EQ(f.Push("hello", &stopped), "hello");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(f.Flush(), "");
}

TEST(StopStringFilterTest, EmptyStopStringsAreIgnored) {
  StopStringFilter f({"", ""});
  bool stopped = true;
  EXPECT_EQ(f.Push("abc", &stopped), "abc");
  EXPECT_FALSE(stopped);
  EXPECT_FALSE(f.stopped());
}

TEST(StopStringFilterTest, StopSpanningSeveralPushes) {
  StopStringFilter f({"###"});
  bool stopped = false;
  EXPECT_EQ(f.Push("ab#", &stopped), "ab");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(f.Push("#", &stopped), "");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(f.Push("#tail", &stopped), "");
  EXPECT_TRUE(stopped);
  EXPECT_TRUE(f.stopped());
  // Later pushes return nothing and still report the stop.
  stopped = false;
  EXPECT_EQ(f.Push("more", &stopped), "");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(f.Flush(), "");
}

TEST(StopStringFilterTest, ReleasesAPrefixThatTurnsOutNotToMatch) {
  StopStringFilter f({"###"});
  bool stopped = false;
  EXPECT_EQ(f.Push("ab##", &stopped), "ab");
  EXPECT_EQ(f.Push("x", &stopped), "##x");
  EXPECT_FALSE(stopped);
  // Overlapping candidates: "aab" holds "ab" back for "abc", "d" releases it.
  StopStringFilter g({"abc"});
  EXPECT_EQ(g.Push("aab", &stopped), "a");
  EXPECT_EQ(g.Push("d", &stopped), "abd");
  EXPECT_EQ(g.Push("aba", &stopped), "ab");  // "a" could still start "abc"
  EXPECT_EQ(g.Push("bc!", &stopped), "");
  EXPECT_TRUE(stopped);
}

TEST(StopStringFilterTest, EarliestOfSeveralStopsWins) {
  StopStringFilter f({"world", "lo w", "xyz"});
  bool stopped = false;
  EXPECT_EQ(f.Push("hello world", &stopped), "hel");
  EXPECT_TRUE(stopped);

  // Across pushes: "lo w" completes at the same time "world" is still partial.
  StopStringFilter g({"world", "o w"});
  EXPECT_EQ(g.Push("hello", &stopped), "hell");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(g.Push(" world", &stopped), "");
  EXPECT_TRUE(stopped);
}

TEST(StopStringFilterTest, StopAtTheVeryStartAndWithinOnePush) {
  StopStringFilter f({"STOP"});
  bool stopped = false;
  EXPECT_EQ(f.Push("STOP and more", &stopped), "");
  EXPECT_TRUE(stopped);

  StopStringFilter g({"\n\n"});
  EXPECT_EQ(g.Push("para one\n", &stopped), "para one");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(g.Push("\npara two", &stopped), "");
  EXPECT_TRUE(stopped);
}

TEST(StopStringFilterTest, FlushReturnsHeldBackText) {
  StopStringFilter f({"##"});
  bool stopped = false;
  EXPECT_EQ(f.Push("x#", &stopped), "x");
  EXPECT_EQ(f.Flush(), "#");
  EXPECT_EQ(f.Flush(), "");
  EXPECT_FALSE(f.stopped());
}

TEST(StopStringFilterTest, NullStoppedPointerIsAllowed) {
  StopStringFilter f({"end"});
  EXPECT_EQ(f.Push("the e", nullptr), "the ");
  EXPECT_EQ(f.Push("nd", nullptr), "");
  EXPECT_TRUE(f.stopped());
}

TEST(StopStringFilterTest, MultiByteStopsNeverSplitCharacters) {
  StopStringFilter f({"日本語"});
  bool stopped = false;
  std::string out = f.Push("café 日本", &stopped);
  EXPECT_EQ(out, "café ");
  EXPECT_TRUE(IsValidUtf8(out));
  EXPECT_EQ(f.Push("人", &stopped), "日本人");
  EXPECT_FALSE(stopped);
}

// ---- IsValidUtf8 -----------------------------------------------------------------------------

TEST(IsValidUtf8Test, Cases) {
  struct Case {
    std::string text;
    bool valid;
  };
  const Case cases[] = {
      {"", true},
      {"plain ascii", true},
      {std::string("nul\0inside", 10), true},
      {"\xC3\xA9", true},                  // é
      {"\xE6\x97\xA5\xE6\x9C\xAC", true},  // 日本
      {"\xF0\x9F\x99\x82", true},          // 🙂
      {"\xED\x9F\xBF", true},              // U+D7FF, just below the surrogates
      {"\xEE\x80\x80", true},              // U+E000, just above
      {"\xF4\x8F\xBF\xBF", true},          // U+10FFFF
      {"\xEF\xBF\xBD", true},              // U+FFFD itself
      {"\xC0\x80", false},                 // overlong NUL
      {"\xC1\xBF", false},                 // overlong
      {"\xE0\x80\x80", false},             // overlong 3-byte
      {"\xE0\x9F\xBF", false},             // overlong 3-byte (U+07FF)
      {"\xF0\x80\x80\x80", false},         // overlong 4-byte
      {"\xF0\x8F\xBF\xBF", false},         // overlong 4-byte (U+FFFF)
      {"\xED\xA0\x80", false},             // U+D800 surrogate
      {"\xED\xBF\xBF", false},             // U+DFFF surrogate
      {"\xF4\x90\x80\x80", false},         // U+110000
      {"\xF5\x80\x80\x80", false},
      {"\xFF", false},
      {"\x80", false},          // stray continuation
      {"a\xBF", false},         // stray continuation after ASCII
      {"\xE6\x97", false},      // truncated
      {"\xF0\x9F\x99", false},  // truncated
      {"\xC3", false},          // truncated
      {"\xE6\x97\x41", false},  // bad continuation
      {"\xC3\xA9\xC3", false},  // valid then truncated
  };
  for (const Case& k : cases) {
    EXPECT_EQ(IsValidUtf8(k.text), k.valid) << "case of " << k.text.size() << " bytes";
  }
}

}  // namespace
}  // namespace tandem

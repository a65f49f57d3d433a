#include "models/text/sentencepiece_tokenizer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "tests/testing/base/files.h"
#include "tests/testing/base/text_corpus.h"

namespace tandem {
namespace {

std::string Corpus() { return testing::EnglishishCorpus(); }

using testing::ListDir;
using testing::ReadAll;
using testing::WriteAll;

class TokenizerTest : public ::testing::Test {
 protected:
  static constexpr int kVocab = 400;

  static void SetUpTestSuite() {
    tmp_ = new testing::TempDir("tokenizer_test");
    dir_ = new std::string(tmp_->path());
    corpus_path_ = new std::string(*dir_ + "/corpus.txt");
    model_path_ = new std::string(*dir_ + "/tokenizer.model");
    WriteAll(*corpus_path_, Corpus());
    TokenizerTrainOptions options;
    options.vocab_size = kVocab;
    options.num_threads = 2;
    options.seed = 7;
    train_status_ =
        new absl::Status(SentencePieceTokenizer::Train(*corpus_path_, *model_path_, options));
    if (train_status_->ok()) {
      absl::StatusOr<std::unique_ptr<Tokenizer>> t = SentencePieceTokenizer::Load(*model_path_);
      if (t.ok()) tokenizer_ = t->release();
    }
  }

  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
    delete train_status_;
    delete model_path_;
    delete corpus_path_;
    delete dir_;
    delete tmp_;  // removes the folder
  }

  void SetUp() override {
    ASSERT_TRUE(train_status_->ok()) << *train_status_;
    ASSERT_NE(tokenizer_, nullptr);
  }

  static testing::TempDir* tmp_;
  static std::string* dir_;
  static std::string* corpus_path_;
  static std::string* model_path_;
  static absl::Status* train_status_;
  static Tokenizer* tokenizer_;
};

testing::TempDir* TokenizerTest::tmp_ = nullptr;
std::string* TokenizerTest::dir_ = nullptr;
std::string* TokenizerTest::corpus_path_ = nullptr;
std::string* TokenizerTest::model_path_ = nullptr;
absl::Status* TokenizerTest::train_status_ = nullptr;
Tokenizer* TokenizerTest::tokenizer_ = nullptr;

TEST_F(TokenizerTest, VocabularyLayout) {
  const Tokenizer& t = *tokenizer_;
  EXPECT_EQ(t.vocab_size(), kVocab);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.IdToPiece(0), "<unk>");
  EXPECT_EQ(t.IdToPiece(1), "<s>");
  EXPECT_EQ(t.IdToPiece(2), "</s>");
  EXPECT_EQ(t.IdToPiece(3), "<0x00>");
  EXPECT_EQ(t.IdToPiece(3 + 0x41), "<0x41>");
  EXPECT_EQ(t.IdToPiece(258), "<0xFF>");
  EXPECT_EQ(t.IdToPiece(-1), "");
  EXPECT_EQ(t.IdToPiece(kVocab), "");
  EXPECT_TRUE(t.IsSpecial(0));
  EXPECT_TRUE(t.IsSpecial(1));
  EXPECT_TRUE(t.IsSpecial(2));
  EXPECT_FALSE(t.IsSpecial(3));
  EXPECT_FALSE(t.IsSpecial(300));
  EXPECT_TRUE(t.IsSpecial(-1));
  EXPECT_TRUE(t.IsSpecial(kVocab));
  // Only the model is left behind: no .vocab, no temporaries.
  EXPECT_EQ(ListDir(*dir_), (std::vector<std::string>{"corpus.txt", "tokenizer.model"}));
}

TEST_F(TokenizerTest, RoundTripsExactly) {
  const std::string texts[] = {
      "hello world",
      "the quick brown fox jumps over the lazy dog.",
      "",
      " ",
      "   ",
      " leading space",
      "  two leading spaces",
      "trailing spaces   ",
      "inner    run  of   spaces",
      "tabs\tand\nnewlines\r\n\n",
      "digits 0123456789 and 3.14159",
      "naïve café — 日本語 🙂",
      "日本語",
      " 🙂🙂 ",
      "déjà vu über",
      "mixed: ASCII, Ünïcödé, and \x7f control \x01 bytes",
  };
  for (const std::string& text : texts) {
    std::vector<int32_t> ids = tokenizer_->Encode(text);
    EXPECT_EQ(tokenizer_->Decode(ids), text) << "\"" << text << "\"";
    for (int32_t id : ids) {
      EXPECT_NE(id, 0) << "<unk> in \"" << text << "\"";  // byte fallback covers everything
      EXPECT_NE(id, 1) << "Encode must not add BOS";
      EXPECT_NE(id, 2) << "Encode must not add EOS";
    }
  }
}

TEST_F(TokenizerTest, LearnsCorpusPiecesAndFallsBackToBytes) {
  // Frequent words are single pieces; unseen scripts are bytes (ids 3..258).
  EXPECT_LE(tokenizer_->Encode("the model").size(), 3u);
  std::vector<int32_t> ids = tokenizer_->Encode("日");
  std::vector<int32_t> bytes;
  for (int32_t id : ids) {
    if (id >= 3 && id <= 258) bytes.push_back(id);
  }
  EXPECT_EQ(bytes, (std::vector<int32_t>{3 + 0xE6, 3 + 0x97, 3 + 0xA5}));
}

TEST_F(TokenizerTest, DecodeDropsSpecialAndOutOfRangeIds) {
  std::vector<int32_t> ids = tokenizer_->Encode("hello world");
  std::vector<int32_t> noisy = {1, 0};
  noisy.insert(noisy.end(), ids.begin(), ids.end());
  noisy.push_back(2);
  noisy.push_back(-5);
  noisy.push_back(kVocab + 10);
  EXPECT_EQ(tokenizer_->Decode(noisy), "hello world");
  EXPECT_EQ(tokenizer_->Decode(std::vector<int32_t>{1, 2, 0}), "");
  // Byte pieces decode to their bytes; a dangling lead byte becomes U+FFFD.
  EXPECT_EQ(tokenizer_->Decode(std::vector<int32_t>{3 + 0xE6, 3 + 0x97, 3 + 0xA5}), "日");
  EXPECT_EQ(tokenizer_->Decode(std::vector<int32_t>{3 + 0xE6}), "\xEF\xBF\xBD");
}

TEST_F(TokenizerTest, SerializedRoundTrip) {
  const std::string proto = tokenizer_->Serialized();
  EXPECT_EQ(proto, ReadAll(*model_path_));
  absl::StatusOr<std::unique_ptr<Tokenizer>> copy = SentencePieceTokenizer::FromSerialized(proto);
  ASSERT_TRUE(copy.ok()) << copy.status();
  const std::string text = "naïve café  hello world 42";
  EXPECT_EQ((*copy)->Encode(text), tokenizer_->Encode(text));
  EXPECT_EQ((*copy)->vocab_size(), kVocab);

  EXPECT_EQ(SentencePieceTokenizer::FromSerialized("definitely not a model proto").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(TokenizerTest, TrainingIsDeterministic) {
  // Same corpus and options into another folder: the very same bytes.
  std::string other = *dir_ + "/other";
  ASSERT_EQ(::mkdir(other.c_str(), 0755), 0);
  const std::string path = other + "/tokenizer.model";
  TokenizerTrainOptions options;
  options.vocab_size = kVocab;
  options.num_threads = 2;
  options.seed = 7;
  ASSERT_TRUE(SentencePieceTokenizer::Train(*corpus_path_, path, options).ok());
  EXPECT_EQ(ReadAll(path), tokenizer_->Serialized());

  // The thread count is recorded in the model but does not change the pieces.
  options.num_threads = 1;
  ASSERT_TRUE(SentencePieceTokenizer::Train(*corpus_path_, path, options).ok());
  absl::StatusOr<std::unique_ptr<Tokenizer>> single = SentencePieceTokenizer::Load(path);
  ASSERT_TRUE(single.ok()) << single.status();
  ASSERT_EQ((*single)->vocab_size(), kVocab);
  for (int id = 0; id < kVocab; ++id) {
    EXPECT_EQ((*single)->IdToPiece(id), tokenizer_->IdToPiece(id)) << id;
  }
  // Sampling fewer lines than the corpus holds is deterministic too.
  options.max_sentences = 150;
  ASSERT_TRUE(SentencePieceTokenizer::Train(*corpus_path_, path, options).ok());
  const std::string sampled = ReadAll(path);
  ASSERT_TRUE(SentencePieceTokenizer::Train(*corpus_path_, path, options).ok());
  EXPECT_EQ(ReadAll(path), sampled);
  EXPECT_EQ(ListDir(other), std::vector<std::string>{"tokenizer.model"});
  ASSERT_EQ(::remove(path.c_str()), 0);
  ASSERT_EQ(::rmdir(other.c_str()), 0);
}

TEST_F(TokenizerTest, TrainsUnigramToo) {
  const std::string path = *dir_ + "/unigram.model";
  TokenizerTrainOptions options;
  options.vocab_size = 320;
  options.model_type = "unigram";
  options.num_threads = 1;
  ASSERT_TRUE(SentencePieceTokenizer::Train(*corpus_path_, path, options).ok());
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = SentencePieceTokenizer::Load(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->vocab_size(), 320);
  const std::string text = "  naïve café — 日本語 🙂  x";
  EXPECT_EQ((*t)->Decode((*t)->Encode(text)), text);
  ASSERT_EQ(::remove(path.c_str()), 0);
}

TEST_F(TokenizerTest, TrainRejectsBadOptions) {
  TokenizerTrainOptions options;
  options.vocab_size = 259;  // no room for a single learned piece
  absl::Status s = SentencePieceTokenizer::Train(*corpus_path_, *dir_ + "/x.model", options);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("vocab_size (259)"), std::string::npos) << s;

  options.vocab_size = 300;
  options.model_type = "word";
  EXPECT_EQ(SentencePieceTokenizer::Train(*corpus_path_, *dir_ + "/x.model", options).code(),
            absl::StatusCode::kInvalidArgument);

  options.model_type = "bpe";
  options.max_sentences = 50;
  EXPECT_EQ(SentencePieceTokenizer::Train(*corpus_path_, *dir_ + "/x.model", options).code(),
            absl::StatusCode::kInvalidArgument);
  options.max_sentences = 0;
  s = SentencePieceTokenizer::Train(*dir_ + "/no_such_corpus.txt", *dir_ + "/x.model", options);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(s.message()).find("no_such_corpus.txt"), std::string::npos) << s;

  // More pieces than the corpus can justify: SentencePiece's own error, naming the corpus.
  options.vocab_size = 100000;
  options.model_type = "unigram";
  s = SentencePieceTokenizer::Train(*corpus_path_, *dir_ + "/x.model", options);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("Vocabulary size too high"), std::string::npos) << s;
  EXPECT_NE(std::string(s.message()).find("corpus.txt"), std::string::npos) << s;

  // An empty corpus.
  const std::string empty = *dir_ + "/empty.txt";
  WriteAll(empty, "");
  options.vocab_size = 300;
  options.model_type = "bpe";
  s = SentencePieceTokenizer::Train(empty, *dir_ + "/x.model", options);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("empty.txt"), std::string::npos) << s;
  ASSERT_EQ(::remove(empty.c_str()), 0);

  EXPECT_EQ(ListDir(*dir_), (std::vector<std::string>{"corpus.txt", "tokenizer.model"}));
}

TEST(TokenizerLoadTest, MissingFileIsNotFound) {
  const testing::TempDir tmp("tokenizer_test");
  const std::string path = tmp / "missing.model";
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = SentencePieceTokenizer::Load(path);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(t.status().message()).find(path), std::string::npos);
}

TEST(TokenizerLoadTest, CorruptFileIsInvalidArgument) {
  const testing::TempDir tmp("tokenizer_test");
  const std::string path = tmp / "corrupt.model";
  WriteAll(path, "this is not a sentencepiece model");
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = SentencePieceTokenizer::Load(path);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(t.status().message()).find(path), std::string::npos);
}

// A model that parses but makes SentencePiece's trie builder throw (found by
// tests/fuzz/tokenizer_fuzz) is an error for that tokenizer, not a crash of the process.
TEST(TokenizerLoadTest, AModelThatMakesSentencePieceThrowIsAnError) {
  const std::string bytes = ReadAll(std::string(TANDEM_SOURCE_DIR) +
                                    "/tests/fuzz/corpus/tokenizer/regression-zero-length-key");
  ASSERT_FALSE(bytes.empty());
  absl::StatusOr<std::unique_ptr<Tokenizer>> t = SentencePieceTokenizer::FromSerialized(bytes);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(std::string(t.status().message()).find("malformed"), std::string::npos)
      << t.status();
}

}  // namespace
}  // namespace tandem

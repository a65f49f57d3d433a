// TextWorkload with a fake model: chunked prefill feeds a long prompt in pieces within the
// iteration's token budget, at fixed offsets, while the running streams keep decoding.
#include "server/core/text_workload.h"

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "models/text/sentencepiece_tokenizer.h"
#include "tests/testing/test_model.h"

namespace tandem {
namespace {

// Greedy decoding always picks token 5; every call is logged ("prefill <slot> <n>",
// "decode <batch>").
class FakeTextModel final : public TextModel {
 public:
  FakeTextModel(std::vector<std::string>* log, int vocab) : log_(log) {
    config_.vocab_size = vocab;
    config_.seq_len = 512;
    config_.dim = 8;
    config_.n_layers = 1;
    config_.n_heads = 1;
    config_.n_kv_heads = 1;
  }
  const LlamaConfig& config() const override { return config_; }
  const std::string& device() const override { return device_; }
  int max_slots() const override { return 4; }
  int free_slots() const override { return 4 - static_cast<int>(length_.size()); }
  absl::StatusOr<int> AcquireSlot() override {
    for (int s = 0; s < 4; ++s) {
      if (!length_.count(s)) {
        length_[s] = 0;
        return s;
      }
    }
    return absl::ResourceExhaustedError("full");
  }
  void ReleaseSlot(int slot) override { length_.erase(slot); }
  int SlotLength(int slot) const override { return length_.at(slot); }
  absl::Status Prefill(int slot, absl::Span<const int32_t> tokens, float* logits) override {
    log_->push_back("prefill " + std::to_string(slot) + " " + std::to_string(tokens.size()));
    length_[slot] += static_cast<int>(tokens.size());
    Pick(logits);
    return absl::OkStatus();
  }
  absl::Status Decode(absl::Span<const int> slots, absl::Span<const int32_t>,
                      float* logits) override {
    log_->push_back("decode " + std::to_string(slots.size()));
    for (size_t i = 0; i < slots.size(); ++i) {
      ++length_[slots[i]];
      Pick(logits + i * config_.vocab_size);
    }
    return absl::OkStatus();
  }
  absl::Status Forward(absl::Span<const int32_t>, std::vector<float>*) override {
    return absl::UnimplementedError("not used");
  }
  int64_t parameter_count() const override { return 0; }

 private:
  void Pick(float* logits) const {
    std::fill(logits, logits + config_.vocab_size, 0.0f);
    logits[5] = 1.0f;
  }
  std::vector<std::string>* log_;
  LlamaConfig config_;
  std::string device_ = "cpu";
  std::map<int, int> length_;
};

class NullStream final : public ResponseStream {
 public:
  void Send(GenerateEvent) override {}
  void Finish(const absl::Status& s) override {
    finished = true;
    status = s;
  }
  bool cancelled() const override { return false; }
  bool finished = false;
  absl::Status status;
};

TEST(TextWorkloadTest, LongPromptsArePrefilledInPiecesWhileStreamsKeepDecoding) {
  testing::TempDir dir("chunked_prefill");
  const std::string model_dir = testing::WriteTinyModel(dir / "tiny");
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = SentencePieceTokenizer::Load(model_dir + "/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::vector<std::string> log;
  auto model = std::make_shared<FakeTextModel>(&log, (*tok)->vocab_size());
  auto entry = std::make_shared<ModelEntry>();
  entry->name = "fake";
  entry->dir.kind = ModelKind::kText;
  entry->tokenizer = std::shared_ptr<const Tokenizer>(*std::move(tok));
  entry->text = {model};

  TextWorkloadOptions o;
  o.prefill_token_budget = 16;
  TextWorkload w(o, /*device_index=*/0, nullptr);
  auto request = [&](int prompt_tokens, int max_tokens, std::shared_ptr<NullStream> stream) {
    auto r = std::make_unique<TextRequest>();
    r->model = entry;
    r->prompt.assign(prompt_tokens, 7);
    r->prompt[0] = 1;  // BOS
    r->max_tokens = max_tokens;
    r->accepted = absl::Now();
    r->stream = std::move(stream);
    return r;
  };
  auto running = std::make_shared<NullStream>();
  w.Admit(request(3, 60, running));
  for (int i = 0; i < 3; ++i) w.RunIteration();  // the first stream is decoding
  auto long_prompt = std::make_shared<NullStream>();
  w.Admit(request(100, 2, long_prompt));
  while (!long_prompt->finished) w.RunIteration();
  ASSERT_TRUE(long_prompt->status.ok()) << long_prompt->status;

  // The long prompt (slot 1) went in pieces of at most the budget, cut at fixed offsets, and
  // the first stream decoded between every two of them.
  std::vector<int> pieces;
  bool decoded_since_piece = true;
  for (const std::string& e : log) {
    if (e.rfind("prefill 1 ", 0) == 0) {
      EXPECT_TRUE(decoded_since_piece) << "two pieces with no decode step between them";
      pieces.push_back(std::stoi(e.substr(10)));
      decoded_since_piece = false;
    } else if (e.rfind("decode", 0) == 0) {
      decoded_since_piece = true;
    }
  }
  EXPECT_EQ(pieces, (std::vector<int>{16, 16, 16, 16, 16, 16, 4}));
  EXPECT_FALSE(running->finished);  // it was decoding all along
}

}  // namespace
}  // namespace tandem

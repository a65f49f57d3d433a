#include "models/llama/llama_config.h"

#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/base/matchers.h"
#include "tests/testing/base/tiny_configs.h"

namespace tandem {
namespace {

using testing::Contains;

// dim 64, 4 heads of 16, 2 KV heads (GQA), 2 layers, hidden derived (192), vocab 100.
LlamaConfig Small() {
  return testing::LlamaShape({/*dim=*/64, /*layers=*/2, /*heads=*/4, /*kv_heads=*/2,
                              /*seq_len=*/32, /*vocab=*/100});
}

TEST(LlamaConfigTest, DerivesHiddenDimLikeLlama2c) {
  // int(2 * 4 * dim / 3) rounded up to a multiple of 32.
  struct Case {
    int dim;
    int hidden;
  };
  for (const Case& k : {Case{64, 192},     // 170 -> 192
                        Case{288, 768},    // 768 exactly (stories15M)
                        Case{320, 864},    // 853 -> 864
                        Case{512, 1376},   // 1365 -> 1376
                        Case{4096, 10944}  // 10922 -> 10944
       }) {
    LlamaConfig c = Small();
    c.dim = k.dim;
    c.n_heads = 4;
    c.n_kv_heads = 4;
    ASSERT_TRUE(c.Normalize().ok()) << k.dim;
    EXPECT_EQ(c.hidden_dim, k.hidden) << "dim " << k.dim;
  }
}

TEST(LlamaConfigTest, NormalizeKeepsExplicitHiddenDimAndDefaultsKvHeads) {
  LlamaConfig c = Small();
  c.hidden_dim = 100;
  c.n_kv_heads = 0;
  ASSERT_TRUE(c.Normalize().ok());
  EXPECT_EQ(c.hidden_dim, 100);
  EXPECT_EQ(c.n_kv_heads, 4);  // 0 means one KV head per attention head
  EXPECT_EQ(c.head_dim(), 16);
}

TEST(LlamaConfigTest, ParameterCountByHand) {
  LlamaConfig c = Small();
  ASSERT_TRUE(c.Normalize().ok());
  ASSERT_EQ(c.hidden_dim, 192);
  // Per layer: norms 2*64 = 128; wq 64*64 = 4096; wk, wv 64*32 = 2048 each; wo 4096;
  // w1, w2, w3 64*192 = 12288 each. 128 + 4096 + 4096 + 4096 + 36864 = 49280.
  // Embeddings 100*64 = 6400, 2 layers 98560, final norm 64, output 6400.
  EXPECT_EQ(c.ParameterCount(), 6400 + 98560 + 64 + 6400);
  c.tie_embeddings = true;
  EXPECT_EQ(c.ParameterCount(), 6400 + 98560 + 64);
}

TEST(LlamaConfigTest, FlopsPerTokenByHand) {
  LlamaConfig c = Small();
  ASSERT_TRUE(c.Normalize().ok());
  // Matmul weights: 2 layers * 49152 + output 6400 = 104704 -> 209408 FLOPs.
  // Attention: 2 * 2 * n_layers 2 * n_heads 4 * head_dim 16 = 512 per cached position.
  EXPECT_DOUBLE_EQ(c.FlopsPerToken(0), 209408.0 + 512.0);
  EXPECT_DOUBLE_EQ(c.FlopsPerToken(9), 209408.0 + 5120.0);
  // Tying changes the parameter count, not the work: the output matmul still runs.
  c.tie_embeddings = true;
  EXPECT_DOUBLE_EQ(c.FlopsPerToken(0), 209408.0 + 512.0);
}

TEST(LlamaConfigTest, JsonRoundTrip) {
  LlamaConfig c = Small();
  c.hidden_dim = 96;
  c.norm_eps = 1e-6f;
  c.rope_theta = 500000.0f;
  c.tie_embeddings = true;
  c.bos_id = 5;
  c.eos_id = 7;
  ASSERT_TRUE(c.Normalize().ok());
  const std::string json = c.ToJson();

  absl::StatusOr<LlamaConfig> back = LlamaConfig::FromJson(json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->dim, 64);
  EXPECT_EQ(back->hidden_dim, 96);
  EXPECT_EQ(back->n_layers, 2);
  EXPECT_EQ(back->n_heads, 4);
  EXPECT_EQ(back->n_kv_heads, 2);
  EXPECT_EQ(back->vocab_size, 100);
  EXPECT_EQ(back->seq_len, 32);
  EXPECT_EQ(back->norm_eps, 1e-6f);
  EXPECT_EQ(back->rope_theta, 500000.0f);
  EXPECT_TRUE(back->tie_embeddings);
  EXPECT_EQ(back->bos_id, 5);
  EXPECT_EQ(back->eos_id, 7);
  EXPECT_EQ(back->ToJson(), json);
}

TEST(LlamaConfigTest, ToJsonFieldsAndReadableFloats) {
  LlamaConfig c = Small();
  ASSERT_TRUE(c.Normalize().ok());
  const std::string json = c.ToJson();
  // The float is written as its shortest form, not as 9.999999747378752e-06.
  EXPECT_TRUE(Contains(json, "\"norm_eps\": 1e-05"));
  nlohmann::json j = nlohmann::json::parse(json);
  EXPECT_EQ(j["architecture"], "llama");
  EXPECT_EQ(j["kind"], "text");
  EXPECT_EQ(j["dim"], 64);
  EXPECT_EQ(j["hidden_dim"], 192);
  EXPECT_EQ(j["n_layers"], 2);
  EXPECT_EQ(j["n_heads"], 4);
  EXPECT_EQ(j["n_kv_heads"], 2);
  EXPECT_EQ(j["vocab_size"], 100);
  EXPECT_EQ(j["seq_len"], 32);
  EXPECT_EQ(j["rope_theta"], 10000.0);
  EXPECT_EQ(j["tie_embeddings"], false);
  EXPECT_EQ(j["bos_id"], 1);
  EXPECT_EQ(j["eos_id"], 2);
  EXPECT_EQ(j.size(), 14u);
}

TEST(LlamaConfigTest, FromJsonMinimalUsesDefaultsAndDerives) {
  absl::StatusOr<LlamaConfig> c = LlamaConfig::FromJson(
      R"({"dim": 320, "n_layers": 3, "n_heads": 8, "vocab_size": 512, "seq_len": 256,
          "unknown_future_field": [1, 2]})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_dim, 864);
  EXPECT_EQ(c->n_kv_heads, 8);
  EXPECT_EQ(c->norm_eps, 1e-5f);
  EXPECT_EQ(c->rope_theta, 10000.0f);
  EXPECT_FALSE(c->tie_embeddings);
  EXPECT_EQ(c->bos_id, 1);
  EXPECT_EQ(c->eos_id, 2);

  c = LlamaConfig::FromJson(
      R"({"dim": 320, "hidden_dim": 0, "n_layers": 3, "n_heads": 8, "vocab_size": 512,
          "seq_len": 256})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_dim, 864);
}

void ExpectInvalid(const LlamaConfig& config, const std::string& message) {
  LlamaConfig c = config;
  absl::Status s = c.Normalize();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << message;
  EXPECT_TRUE(Contains(std::string(s.message()), message));
}

TEST(LlamaConfigTest, NormalizeNamesTheBadField) {
  LlamaConfig c = Small();
  c.dim = 320;
  c.n_heads = 6;
  c.n_kv_heads = 6;
  ExpectInvalid(c, "n_heads (6) must divide dim (320)");

  c = Small();
  c.n_kv_heads = 3;
  ExpectInvalid(c, "n_kv_heads (3) must divide n_heads (4)");
  c.n_kv_heads = 8;
  ExpectInvalid(c, "n_kv_heads (8) must divide n_heads (4)");
  c.n_kv_heads = -1;
  ExpectInvalid(c, "n_kv_heads (-1)");

  c = Small();
  c.dim = 20;  // head_dim 5
  ExpectInvalid(c, "head_dim");

  c = Small();
  c.dim = 0;
  ExpectInvalid(c, "dim (0) must be positive");
  c = Small();
  c.n_layers = -2;
  ExpectInvalid(c, "n_layers (-2) must be positive");
  c = Small();
  c.n_heads = 0;
  ExpectInvalid(c, "n_heads (0) must be positive");
  c = Small();
  c.vocab_size = 0;
  ExpectInvalid(c, "vocab_size (0) must be positive");
  c = Small();
  c.seq_len = 0;
  ExpectInvalid(c, "seq_len (0) must be positive");
  c = Small();
  c.hidden_dim = -5;
  ExpectInvalid(c, "hidden_dim (-5)");

  c = Small();
  c.dim = 1 << 17;
  ExpectInvalid(c, "dim (131072) must be at most 65536");
  c = Small();
  c.seq_len = (1 << 20) + 1;
  ExpectInvalid(c, "seq_len (1048577)");
  c = Small();
  c.vocab_size = (1 << 22) + 1;
  ExpectInvalid(c, "vocab_size (4194305)");
  c = Small();
  c.n_layers = 1025;
  ExpectInvalid(c, "n_layers (1025)");

  c = Small();
  c.bos_id = 100;
  ExpectInvalid(c, "bos_id (100)");
  c = Small();
  c.eos_id = -1;
  ExpectInvalid(c, "eos_id (-1)");
  c = Small();
  c.norm_eps = 0.0f;
  ExpectInvalid(c, "norm_eps");
  c = Small();
  c.rope_theta = -1.0f;
  ExpectInvalid(c, "rope_theta");
}

TEST(LlamaConfigTest, FromJsonRejectsBadInput) {
  struct Case {
    const char* json;
    const char* message;
  };
  const Case cases[] = {
      {"not json", "not valid JSON"},
      {"[1, 2]", "must be a JSON object"},
      {R"({"n_layers": 1, "n_heads": 4, "vocab_size": 10, "seq_len": 8})", "\"dim\""},
      {R"({"dim": "64", "n_layers": 1, "n_heads": 4, "vocab_size": 10, "seq_len": 8})",
       "dim must be an integer"},
      {R"({"dim": 64.5, "n_layers": 1, "n_heads": 4, "vocab_size": 10, "seq_len": 8})",
       "dim must be an integer"},
      {R"({"dim": 64, "n_layers": 1, "n_heads": 4, "vocab_size": 10, "seq_len": 8,
           "tie_embeddings": 1})",
       "tie_embeddings"},
      {R"({"dim": 64, "n_layers": 1, "n_heads": 4, "vocab_size": 10, "seq_len": 8,
           "norm_eps": "small"})",
       "norm_eps"},
      {R"({"dim": 64, "n_layers": 1, "n_heads": 4, "vocab_size": 10, "seq_len": 8,
           "architecture": "gpt2"})",
       "architecture"},
      {R"({"dim": 64, "n_layers": 1, "n_heads": 4, "vocab_size": 10, "seq_len": 8,
           "kind": "image"})",
       "kind"},
      {R"({"dim": 99999999999, "n_layers": 1, "n_heads": 4, "vocab_size": 10, "seq_len": 8})",
       "dim (99999999999) is out of range"},
      {R"({"dim": 64, "n_layers": 1, "n_heads": 6, "vocab_size": 10, "seq_len": 8})",
       "n_heads (6) must divide dim (64)"},
  };
  for (const Case& k : cases) {
    absl::StatusOr<LlamaConfig> c = LlamaConfig::FromJson(k.json);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << k.json;
    EXPECT_TRUE(Contains(std::string(c.status().message()), k.message)) << k.json;
  }
}

}  // namespace
}  // namespace tandem

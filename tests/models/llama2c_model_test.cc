// llama2.c's two files in and out of tandem model directories (models/llama2c_model.h), checked
// end to end against the reference of run.c (tests/testing/base/run_c_reference.h): the real
// stories260K checkpoint imported with a tokenizer.bin that has merges decodes greedily to run.c's
// tokens and text; a tandem model (SentencePiece tokenizer) exported runs in run.c with tandem's
// greedy tokens; and the conversions refuse what run.c could not reproduce.
#include "models/llama2c_model.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "models/formats/llama2c.h"
#include "models/llama/llama.h"
#include "models/model_dir.h"
#include "models/text/llama2c_tokenizer.h"
#include "models/text/text_stream.h"
#include "models/text_model.h"
#include "tests/testing/base/files.h"
#include "tests/testing/base/matchers.h"
#include "tests/testing/base/run_c_reference.h"
#include "tests/testing/test_model.h"

namespace tandem {
namespace {

const char kStories260K[] = TANDEM_SOURCE_DIR "/../shared/models/stories260K.bin";

using testing::Contains;
using testing::RunCGenerate;
using testing::RunCOutput;
using testing::RunCTokenizer;
using testing::RunCTransformer;

// A served model as tandemd holds it: the directory read, its tokenizer and the LibTorch model.
struct Served {
  ModelDir dir;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<TextModel> model;
};

Served Serve(const std::string& path) {
  Served s;
  absl::StatusOr<ModelDir> dir = ReadModelDir(path);
  EXPECT_TRUE(dir.ok()) << dir.status();
  if (!dir.ok()) return s;
  s.dir = *dir;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadModelTokenizer(s.dir);
  EXPECT_TRUE(tok.ok()) << tok.status();
  if (tok.ok()) s.tokenizer = *std::move(tok);
  absl::StatusOr<SafetensorsFile> weights = ReadSafetensors(s.dir.weights_path());
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return s;
  absl::StatusOr<std::unique_ptr<TextModel>> model =
      CreateLlamaModel(s.dir.llama, weights->tensors, TextModelOptions{"cpu", 1});
  EXPECT_TRUE(model.ok()) << model.status();
  if (model.ok()) s.model = *std::move(model);
  return s;
}

int32_t Argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

// Greedy decoding as run.c's generate() loop does it, with the server's prompt (BOS, then the
// prompt's ids): positions [0, steps) are forwarded, each followed by its argmax unless that is
// `stop`. The prompt's and generated ids, BOS first.
std::vector<int32_t> TandemGreedy(Served& s, const std::string& prompt, int steps, int32_t stop) {
  std::vector<int32_t> ids = {s.dir.llama.bos_id};
  for (int32_t id : s.tokenizer->Encode(prompt)) ids.push_back(id);
  absl::StatusOr<int> slot = s.model->AcquireSlot();
  EXPECT_TRUE(slot.ok());
  std::vector<float> logits(s.dir.llama.vocab_size);
  EXPECT_TRUE(s.model->Prefill(*slot, ids, logits.data()).ok());
  int forwarded = static_cast<int>(ids.size());
  while (true) {
    const int32_t next = Argmax(logits);
    if (next == stop) break;
    ids.push_back(next);
    if (forwarded == steps) break;
    const int one = *slot;
    EXPECT_TRUE(s.model->Decode({&one, 1}, {&next, 1}, logits.data()).ok());
    ++forwarded;
  }
  s.model->ReleaseSlot(*slot);
  return ids;
}

std::vector<int32_t> ToIds(const std::vector<int>& v) { return {v.begin(), v.end()}; }

class Llama2cModelTest : public testing::TempDirTest {};

TEST_F(Llama2cModelTest, ImportedStories260KDecodesToRunCsTokensAndText) {
  if (!std::ifstream(kStories260K).good()) GTEST_SKIP() << "no " << kStories260K;
  const std::string tokenizer_bin = Path("tok512.bin");
  testing::WriteAll(tokenizer_bin, SerializeLlama2cVocab(SyntheticLlama2cVocab(512, 1)));
  const std::string dir = Path("stories");
  absl::StatusOr<Llama2cImportSummary> imported = ImportLlama2c(kStories260K, tokenizer_bin, dir);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->version, 0);
  EXPECT_EQ(imported->tokenizer_pieces, 512);
  EXPECT_TRUE(std::filesystem::exists(dir + "/tokenizer.bin"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/tokenizer.model"));
  Served served = Serve(dir);
  ASSERT_NE(served.model, nullptr);
  EXPECT_EQ(served.dir.tokenizer_kind, TokenizerKind::kLlama2c);
  EXPECT_EQ(served.dir.llama.eos_id, 1);

  RunCTransformer run_c(kStories260K);
  RunCTokenizer run_c_tokenizer(testing::ReadAll(tokenizer_bin), 512);
  for (const std::string prompt :
       {"Once upon a time", "", "Lily and Max went to the park. \xE6\x97\xA5\xE6\x9C\xAC"}) {
    RunCTransformer fresh(kStories260K);  // a KV cache of its own per prompt
    const RunCOutput want = RunCGenerate(fresh, run_c_tokenizer, prompt, 200);
    const std::vector<int32_t> got = TandemGreedy(served, prompt, 200, served.dir.llama.eos_id);
    EXPECT_EQ(got, ToIds(want.tokens)) << "\"" << prompt << "\"";
    // The text: run.c's pieces (before safe_printf drops lone non-printable bytes) are Decode of
    // every id after BOS.
    EXPECT_EQ(served.tokenizer->Decode(absl::MakeConstSpan(got).subspan(1)),
              ReplaceInvalidUtf8(want.pieces))
        << "\"" << prompt << "\"";
    EXPECT_GT(got.size(), 10u);  // text, not an early stop
  }
}

// WriteTinyModel's SentencePiece model exported: run.c's encoder gives SentencePiece's prompt
// ids, and run.c's forward on model.bin generates tandem's greedy tokens.
void ExpectExportRunsAsInTandem(const std::string& model_dir, const std::string& out_dir) {
  absl::StatusOr<Llama2cExportSummary> exported =
      ExportLlama2c(model_dir, out_dir, Llama2cExportOptions{});
  ASSERT_TRUE(exported.ok()) << exported.status();
  Served served = Serve(model_dir);
  ASSERT_NE(served.model, nullptr);
  const int vocab = served.dir.llama.vocab_size;
  RunCTokenizer run_c_tokenizer(testing::ReadAll(exported->tokenizer_path), vocab);
  for (const std::string prompt : {"the cat sat on a mat", "caf\xC3\xA9 42 \xF0\x9F\x99\x82"}) {
    RunCTransformer run_c(exported->checkpoint_path);
    const RunCOutput want = RunCGenerate(run_c, run_c_tokenizer, prompt, 60);
    // run.c stops at BOS only; tandem's loop here stops there too.
    const std::vector<int32_t> got = TandemGreedy(served, prompt, 60, kLlama2cBosId);
    EXPECT_EQ(got, ToIds(want.tokens)) << "\"" << prompt << "\"";
  }
}

TEST_F(Llama2cModelTest, ExportedModelRunsInRunCWithTandemsGreedyTokens) {
  testing::TinyModelSpec untied;  // LlamaShape leaves the output untied: a negative vocab_size
  ExpectExportRunsAsInTandem(testing::WriteTinyModel(Path("untied")), Path("untied-out"));
  std::string tied = Path("tied");
  testing::TinyModelSpec spec;
  spec.seed = 9;
  testing::WriteTinyModel(tied, spec);
  // Tie it: drop output.weight and say so in the config.
  absl::StatusOr<ModelDir> dir = ReadModelDir(tied);
  ASSERT_TRUE(dir.ok());
  absl::StatusOr<SafetensorsFile> weights = ReadSafetensors(dir->weights_path());
  ASSERT_TRUE(weights.ok());
  weights->tensors.erase("output.weight");
  LlamaConfig config = dir->llama;
  config.tie_embeddings = true;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadModelTokenizer(*dir);
  ASSERT_TRUE(tok.ok());
  ASSERT_TRUE(WriteTextModelDir(tied, config, *weights, (*tok)->File(), {}).ok());
  ExpectExportRunsAsInTandem(tied, Path("tied-out"));
  absl::StatusOr<Llama2cCheckpoint> ckpt = ReadLlama2cCheckpoint(Path("tied-out") + "/model.bin");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE(ckpt->header.shared_classifier);
}

TEST_F(Llama2cModelTest, ExportThenImportKeepsTheWeightsAndEveryVersionImports) {
  const std::string model = testing::WriteTinyModel(Path("model"));
  Served original = Serve(model);
  ASSERT_NE(original.model, nullptr);
  for (int version : {0, 1, 2}) {
    const std::string out = Path("v" + std::to_string(version));
    Llama2cExportOptions options;
    options.version = version;
    ASSERT_TRUE(ExportLlama2c(model, out, options).ok());
    const std::string back = out + "/model";
    absl::StatusOr<Llama2cImportSummary> imported =
        ImportLlama2c(out + "/model.bin", out + "/tokenizer.bin", back);
    ASSERT_TRUE(imported.ok()) << imported.status();
    EXPECT_EQ(imported->version, version);
    Served again = Serve(back);
    ASSERT_NE(again.model, nullptr);
    // The same ids for the same text, and (float32 versions) the very same weights.
    const std::string text = "the dog ran far away from home";
    EXPECT_EQ(again.tokenizer->Encode(text), original.tokenizer->Encode(text));
    EXPECT_EQ(again.tokenizer->Decode(original.tokenizer->Encode(text)), text);
    absl::StatusOr<SafetensorsFile> a = ReadSafetensors(original.dir.weights_path());
    absl::StatusOr<SafetensorsFile> b = ReadSafetensors(again.dir.weights_path());
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(a->tensors.size(), b->tensors.size());
    if (version < 2) {
      for (const auto& [name, t] : a->tensors) EXPECT_EQ(b->tensors.at(name).bytes, t.bytes);
    }
    // Q8_0: logits within the quantization error.
    std::vector<float> want, got;
    const std::vector<int32_t> ids = {1, 5, 100, 200};
    ASSERT_TRUE(original.model->Forward(ids, &want).ok());
    ASSERT_TRUE(again.model->Forward(ids, &got).ok());
    float worst = 0;
    for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::fabs(want[i] - got[i]));
    EXPECT_LE(worst, version < 2 ? 0.0f : 0.02f) << "version " << version;
  }
}

TEST_F(Llama2cModelTest, RefusesWhatRunCCannotReproduce) {
  const std::string model = testing::WriteTinyModel(Path("model"));
  absl::StatusOr<ModelDir> dir = ReadModelDir(model);
  ASSERT_TRUE(dir.ok());
  LlamaConfig config = dir->llama;
  config.rope_theta = 500000.0f;
  absl::Status s = Llama2cHeaderFromConfig(config, 0).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(s.message(), "rope_theta 10000")) << s;
  config = dir->llama;
  config.norm_eps = 1e-6f;
  EXPECT_EQ(Llama2cHeaderFromConfig(config, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);

  const std::string image = testing::WriteTinyImageModel(Path("image"));
  s = ExportLlama2c(image, Path("image-out"), {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "image model")) << s;
  EXPECT_EQ(ExportLlama2c(Path("missing"), Path("out"), {}).status().code(),
            absl::StatusCode::kNotFound);

  // Import: into a folder that holds something, or with a tokenizer too small for the model.
  ASSERT_TRUE(ExportLlama2c(model, Path("out"), {}).ok());
  s = ImportLlama2c(Path("out/model.bin"), Path("out/tokenizer.bin"), Path("out")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  const std::string small = Path("small.bin");
  testing::WriteAll(small, SerializeLlama2cVocab(SyntheticLlama2cVocab(300, 1)));
  s = ImportLlama2c(Path("out/model.bin"), small, Path("new")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "has 300 pieces but the checkpoint's vocab_size is 320")) << s;
  EXPECT_FALSE(std::filesystem::exists(Path("new")));
}

}  // namespace
}  // namespace tandem

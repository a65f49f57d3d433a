// tandemd serves what run.c runs: the real stories260K checkpoint imported with a tokenizer.bin
// (models/llama2c_model.h) into a models folder, an in-process Server on a loopback port, and
// greedy Generate calls over a real gRPC channel whose tokens are the reference run.c's
// (tests/testing/base/run_c_reference.h), ending where run.c ends (at BOS: reason EOS).
#include <grpcpp/grpcpp.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "models/llama2c_model.h"
#include "models/text/llama2c_tokenizer.h"
#include "server/api/server.h"
#include "tandem/v1/inference.grpc.pb.h"
#include "tests/testing/base/files.h"
#include "tests/testing/base/run_c_reference.h"

namespace tandem {
namespace {

const char kStories260K[] = TANDEM_SOURCE_DIR "/../shared/models/stories260K.bin";

TEST(Llama2cE2ETest, ImportedModelStreamsRunCsTokens) {
  if (!std::ifstream(kStories260K).good()) GTEST_SKIP() << "no " << kStories260K;
  testing::TempDir root("tandem-llama2c-e2e");
  const std::string tokenizer_bin = root / "tok512.bin";
  testing::WriteAll(tokenizer_bin, SerializeLlama2cVocab(SyntheticLlama2cVocab(512, 1)));
  ASSERT_TRUE(ImportLlama2c(kStories260K, tokenizer_bin, root / "models/stories").ok());

  ServerOptions o;
  o.listen = "127.0.0.1:0";
  o.metrics_listen = "";
  o.models_dir = root / "models";
  o.devices = {"cpu"};
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Create(o);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = tandem::v1::Inference::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", (*server)->port()), grpc::InsecureChannelCredentials()));

  testing::RunCTokenizer run_c_tokenizer(testing::ReadAll(tokenizer_bin), 512);
  for (const std::string prompt : {"Once upon a time", "", "Lily and Max"}) {
    testing::RunCTransformer run_c(kStories260K);
    const int steps = 120;
    const testing::RunCOutput want = testing::RunCGenerate(run_c, run_c_tokenizer, prompt, steps);
    const int prompt_tokens = static_cast<int>(run_c_tokenizer.Encode(prompt, true, false).size());
    // run.c forwards `steps` positions; the server's budget is the completion's.
    const int max_tokens = steps + 1 - prompt_tokens;

    tandem::v1::GenerateRequest req;
    req.set_prompt(prompt);
    req.mutable_text()->set_max_tokens(max_tokens);
    req.mutable_text()->set_temperature(0);
    req.mutable_text()->set_include_token_ids(true);
    grpc::ClientContext ctx;
    auto reader = stub->Generate(&ctx, req);
    tandem::v1::GenerateResponse resp;
    std::vector<int> ids(want.tokens.begin(), want.tokens.begin() + prompt_tokens);
    tandem::v1::Finished finished;
    while (reader->Read(&resp)) {
      if (resp.has_text()) ids.insert(ids.end(), resp.text().token_ids().begin(),
                                      resp.text().token_ids().end());
      if (resp.has_finished()) finished = resp.finished();
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(ids, want.tokens) << "\"" << prompt << "\"";
    const bool stopped_at_bos = static_cast<int>(want.tokens.size()) < steps + 1;
    EXPECT_EQ(finished.reason(),
              stopped_at_bos ? tandem::v1::Finished::EOS : tandem::v1::Finished::LENGTH)
        << "\"" << prompt << "\"";
    EXPECT_EQ(finished.usage().prompt_tokens(), prompt_tokens);
  }
  (*server)->Shutdown(absl::Seconds(5));
}

}  // namespace
}  // namespace tandem

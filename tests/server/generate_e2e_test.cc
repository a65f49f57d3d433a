// End to end over a real gRPC channel: an in-process Server on a free loopback port serving a
// tiny seeded model, driven through the generated stubs exactly as a remote client would.
#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "models/text/sentencepiece_tokenizer.h"
#include "server/api/server.h"
#include "server/core/worker_pool.h"
#include "tandem/v1/inference.grpc.pb.h"
#include "tandem/v1/training.grpc.pb.h"
#include "tests/server/device_hold.h"
#include "tests/testing/test_model.h"

namespace tandem {
namespace {

using tandem::v1::Finished;
using tandem::v1::GenerateRequest;
using tandem::v1::GenerateResponse;

struct StreamResult {
  grpc::Status status;
  std::string text;
  std::vector<int32_t> ids;
  int deltas = 0;
  bool finished_seen = false;
  Finished finished;
};

class GenerateE2ETest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(testing::MakeTempDir("tandem-e2e"));
    testing::WriteTinyModel(*root_ + "/models/tiny");
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*root_);
    delete root_;
  }

  void StartServer(int max_sequences = 8, int max_pending = 64) {
    ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.metrics_listen = "127.0.0.1:0";
    o.models_dir = *root_ + "/models";
    o.devices = {"cpu"};
    o.max_sequences_per_device = max_sequences;
    o.max_pending = max_pending;
    auto server = Server::Create(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = tandem::v1::Inference::NewStub(channel_);
  }

  void SetUp() override { StartServer(); }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::Seconds(5));
  }

  static GenerateRequest TextRequest(const std::string& prompt, int max_tokens,
                                     float temperature = 0, uint64_t seed = 1) {
    GenerateRequest r;
    r.set_prompt(prompt);
    r.mutable_text()->set_max_tokens(max_tokens);
    r.mutable_text()->set_temperature(temperature);
    r.mutable_text()->set_seed(seed);
    r.mutable_text()->set_include_token_ids(true);
    return r;
  }

  StreamResult Run(const GenerateRequest& req, double deadline_s = 30) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(static_cast<int>(deadline_s * 1000)));
    StreamResult out;
    auto reader = stub_->Generate(&ctx, req);
    GenerateResponse resp;
    while (reader->Read(&resp)) {
      if (resp.has_text()) {
        EXPECT_FALSE(out.finished_seen) << "text after Finished";
        ++out.deltas;
        out.text += resp.text().text();
        out.ids.insert(out.ids.end(), resp.text().token_ids().begin(),
                       resp.text().token_ids().end());
      } else if (resp.has_finished()) {
        EXPECT_FALSE(out.finished_seen) << "two Finished events";
        out.finished_seen = true;
        out.finished = resp.finished();
      }
    }
    out.status = reader->Finish();
    return out;
  }

  std::unique_ptr<Tokenizer> LoadTokenizer() {
    auto tok = SentencePieceTokenizer::Load(*root_ + "/models/tiny/tokenizer.model");
    EXPECT_TRUE(tok.ok());
    return *std::move(tok);
  }

  static std::string* root_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tandem::v1::Inference::Stub> stub_;
};

std::string* GenerateE2ETest::root_ = nullptr;

TEST_F(GenerateE2ETest, HealthIsServing) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(health->Check(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(GenerateE2ETest, TokensStreamAndFinishedCarriesUsage) {
  const std::string prompt = "the cat sat on";
  StreamResult r = Run(TextRequest(prompt, 24));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_TRUE(r.finished_seen);
  auto tok = LoadTokenizer();
  const int prompt_tokens = 1 + static_cast<int>(tok->Encode(prompt).size());
  EXPECT_EQ(r.finished.usage().prompt_tokens(), prompt_tokens);
  const bool eos = r.finished.reason() == Finished::EOS;
  ASSERT_TRUE(eos || r.finished.reason() == Finished::LENGTH) << r.finished.DebugString();
  // Every generated token is streamed except a final EOS, which is counted but has no text.
  EXPECT_EQ(r.finished.usage().completion_tokens(), static_cast<int>(r.ids.size()) + (eos ? 1 : 0));
  if (!eos) EXPECT_EQ(r.finished.usage().completion_tokens(), 24);
  EXPECT_GT(r.deltas, 1) << "tokens should arrive as a stream, not one message";
  // The streamed text is exactly the decoding of the streamed ids.
  EXPECT_EQ(r.text, tok->Decode(r.ids));
  const auto& u = r.finished.usage();
  EXPECT_GE(u.queue_seconds(), 0);
  EXPECT_GE(u.time_to_first_token_seconds(), u.queue_seconds());
  EXPECT_GE(u.total_seconds(), u.time_to_first_token_seconds());
  EXPECT_EQ(r.finished.model(), "tiny");
  EXPECT_EQ(r.finished.model_version(), 1);
  EXPECT_EQ(r.finished.seed(), 1u);
}

TEST_F(GenerateE2ETest, FinishedEchoesTheRequestIdOrTheOneTheServerChose) {
  GenerateRequest mine = TextRequest("the cat", 4);
  mine.set_request_id("client-42");
  StreamResult r = Run(mine);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.finished.request_id(), "client-42");
  StreamResult a = Run(TextRequest("the cat", 4));
  StreamResult b = Run(TextRequest("the cat", 4));
  ASSERT_TRUE(a.status.ok() && b.status.ok());
  EXPECT_EQ(a.finished.request_id().rfind("gen-", 0), 0u) << a.finished.request_id();
  EXPECT_NE(a.finished.request_id(), b.finished.request_id());
}

// A hot swap to a version with another tokenizer: the request in flight was tokenized by version
// 1 and runs to its end on version 1 (weights and tokenizer); the next one is version 2's.
TEST_F(GenerateE2ETest, HotSwapToANewTokenizerLeavesInFlightRequestsOnTheirVersion) {
  testing::TinyModelSpec spec;
  spec.vocab = 400;
  spec.seed = 9;
  const std::string v2 = testing::WriteTinyModel(*root_ + "/swap/tiny-v2", spec);
  auto tok1 = LoadTokenizer();
  auto tok2 = SentencePieceTokenizer::Load(v2 + "/tokenizer.model");
  ASSERT_TRUE(tok2.ok()) << tok2.status();
  const std::string prompt = "the cat sat on the mat";
  ASSERT_NE(tok1->Encode(prompt), (*tok2)->Encode(prompt)) << "the tokenizers should differ";

  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, TextRequest(prompt, 60));
  GenerateResponse first;
  ASSERT_TRUE(reader->Read(&first));  // validated, admitted, decoding on version 1
  absl::StatusOr<std::shared_ptr<const ModelEntry>> published =
      server_->registry()->Publish("tiny", v2);
  ASSERT_TRUE(published.ok()) << published.status();
  EXPECT_EQ((*published)->version, 2);
  StreamResult r;
  r.text = first.text().text();
  r.ids.assign(first.text().token_ids().begin(), first.text().token_ids().end());
  GenerateResponse resp;
  while (reader->Read(&resp)) {
    if (resp.has_text()) {
      r.text += resp.text().text();
      r.ids.insert(r.ids.end(), resp.text().token_ids().begin(), resp.text().token_ids().end());
    } else if (resp.has_finished()) {
      r.finished = resp.finished();
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(r.finished.model_version(), 1);
  EXPECT_EQ(r.finished.usage().prompt_tokens(), 1 + static_cast<int>(tok1->Encode(prompt).size()));
  EXPECT_EQ(r.text, tok1->Decode(r.ids));

  StreamResult after = Run(TextRequest(prompt, 8));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.finished.model_version(), 2);
  EXPECT_EQ(after.finished.usage().prompt_tokens(),
            1 + static_cast<int>((*tok2)->Encode(prompt).size()));
  EXPECT_EQ(after.text, (*tok2)->Decode(after.ids));
  for (int32_t id : after.ids) EXPECT_LT(id, (*tok2)->vocab_size());
}

TEST_F(GenerateE2ETest, SameSeedSameTextWhateverIsBatchedAlongside) {
  GenerateRequest a = TextRequest("a dog ran far", 40, /*temperature=*/1.0f, /*seed=*/1234);
  a.mutable_text()->set_top_k(50);
  StreamResult alone = Run(a);
  ASSERT_TRUE(alone.status.ok());
  ASSERT_FALSE(alone.ids.empty());

  // The same request again, now with other streams decoding in the same batches.
  std::vector<StreamResult> others(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      others[i] = Run(TextRequest(absl::StrCat("stars over the river ", i), 60, 0.9f, 77 + i));
    });
  }
  StreamResult batched = Run(a);
  for (auto& t : threads) t.join();
  ASSERT_TRUE(batched.status.ok());
  EXPECT_EQ(batched.ids, alone.ids);
  EXPECT_EQ(batched.text, alone.text);
  for (const auto& o : others) EXPECT_TRUE(o.status.ok()) << o.status.error_message();

  // A different seed gives a different sample.
  GenerateRequest b = a;
  b.mutable_text()->set_seed(4321);
  EXPECT_NE(Run(b).ids, alone.ids);
}

TEST_F(GenerateE2ETest, StopStringEndsTheStreamBeforeIt) {
  // Find what greedy decoding produces, then ask it to stop at a piece of that text.
  StreamResult full = Run(TextRequest("the sun was", 40));
  ASSERT_TRUE(full.status.ok());
  ASSERT_GE(full.text.size(), 6u) << "greedy text too short to cut: '" << full.text << "'";
  // Three characters from the middle, cut on UTF-8 character boundaries.
  auto is_cont = [&](size_t i) { return (static_cast<unsigned char>(full.text[i]) & 0xC0) == 0x80; };
  size_t begin = full.text.size() / 2, end = begin;
  while (begin > 0 && is_cont(begin)) --begin;
  for (int chars = 0; chars < 3 && end < full.text.size(); ++chars) {
    ++end;
    while (end < full.text.size() && is_cont(end)) ++end;
  }
  const std::string stop = full.text.substr(begin, end - begin);
  const size_t cut = full.text.find(stop);
  GenerateRequest req = TextRequest("the sun was", 40);
  req.mutable_text()->add_stop(stop);
  StreamResult r = Run(req);
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.finished.reason(), Finished::STOP);
  EXPECT_EQ(r.text, full.text.substr(0, cut));
}

TEST_F(GenerateE2ETest, ClientCancelStopsGenerationAndFreesTheSlot) {
  StartServer(/*max_sequences=*/1);  // one KV slot: a leaked slot would block the next request
  grpc::ClientContext ctx;
  GenerateRequest long_req = TextRequest("the moon", 120);
  long_req.mutable_text()->set_temperature(1.0f);  // sampling: EOS is unlikely to end it early
  auto reader = stub_->Generate(&ctx, long_req);
  GenerateResponse resp;
  ASSERT_TRUE(reader->Read(&resp));  // generation has started
  ctx.TryCancel();
  while (reader->Read(&resp)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);

  StreamResult next = Run(TextRequest("the cat", 5), /*deadline_s=*/10);
  EXPECT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_TRUE(next.finished_seen);
}

TEST_F(GenerateE2ETest, DeadlineCancelsWorkOnTheDevice) {
  StartServer(/*max_sequences=*/1);
  GenerateRequest req = TextRequest("the river", 100);
  req.mutable_text()->set_temperature(1.0f);
  grpc::ClientContext ctx;
  const auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(1500);
  ctx.set_deadline(deadline);
  auto reader = stub_->Generate(&ctx, req);
  GenerateResponse resp;
  ASSERT_TRUE(reader->Read(&resp));  // decoding on the device
  int reads = 1;
  {
    // The device stopped mid-request until the deadline has passed (on both sides: the server's
    // may trail the client's by the transport's delay), so a fast tiny model cannot finish first.
    testing::DeviceHold hold(server_->pool()->loop(0));
    ASSERT_TRUE(hold.Hold());
    std::this_thread::sleep_until(deadline + std::chrono::milliseconds(300));
  }
  while (reader->Read(&resp)) ++reads;
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(reads, 100) << "the request ran to its end after its deadline";
  StreamResult next = Run(TextRequest("the cat", 5), /*deadline_s=*/10);
  EXPECT_TRUE(next.status.ok()) << next.status.error_message();
}

struct BadCase {
  const char* name;
  GenerateRequest request;
  grpc::StatusCode code;
  const char* message_part;
};

TEST_F(GenerateE2ETest, BadRequestsAreRejectedWhileOtherStreamsContinue) {
  // A long stream runs the whole time; it must end normally with every token.
  StreamResult background;
  std::thread bg([&] {
    GenerateRequest r = TextRequest("the hills", 100, 1.0f, 99);
    background = Run(r);
  });

  std::vector<BadCase> cases;
  auto text = [](const std::string& prompt) { return TextRequest(prompt, 5); };
  {
    BadCase c{"unknown model", text("hi"), grpc::StatusCode::NOT_FOUND, "unknown model \"nope\""};
    c.request.set_model("nope");
    cases.push_back(c);
  }
  {
    BadCase c{"max_tokens 0", text("hi"), grpc::StatusCode::INVALID_ARGUMENT, "max_tokens"};
    c.request.mutable_text()->set_max_tokens(0);
    cases.push_back(c);
  }
  {
    BadCase c{"max_tokens negative", text("hi"), grpc::StatusCode::INVALID_ARGUMENT,
              "max_tokens"};
    c.request.mutable_text()->set_max_tokens(-3);
    cases.push_back(c);
  }
  {
    BadCase c{"max_tokens past context", text("hi"), grpc::StatusCode::INVALID_ARGUMENT,
              "context of 128"};
    c.request.mutable_text()->set_max_tokens(500);
    cases.push_back(c);
  }
  {
    BadCase c{"negative temperature", text("hi"), grpc::StatusCode::INVALID_ARGUMENT,
              "temperature"};
    c.request.mutable_text()->set_temperature(-0.5f);
    cases.push_back(c);
  }
  {
    BadCase c{"NaN temperature", text("hi"), grpc::StatusCode::INVALID_ARGUMENT, "temperature"};
    c.request.mutable_text()->set_temperature(std::numeric_limits<float>::quiet_NaN());
    cases.push_back(c);
  }
  {
    BadCase c{"top_p 0", text("hi"), grpc::StatusCode::INVALID_ARGUMENT, "top_p"};
    c.request.mutable_text()->set_top_p(0.0f);
    cases.push_back(c);
  }
  {
    BadCase c{"top_p above 1", text("hi"), grpc::StatusCode::INVALID_ARGUMENT, "top_p"};
    c.request.mutable_text()->set_top_p(1.5f);
    cases.push_back(c);
  }
  {
    std::string long_prompt;
    for (int i = 0; i < 300; ++i) long_prompt += "river stars moon ";
    BadCase c{"prompt longer than context", text(long_prompt), grpc::StatusCode::INVALID_ARGUMENT,
              "context of 128"};
    cases.push_back(c);
  }
  {
    BadCase c{"invalid UTF-8", text(std::string("ok \xff\xfe bad")),
              grpc::StatusCode::INVALID_ARGUMENT, "UTF-8"};
    cases.push_back(c);
  }
  {
    BadCase c{"image params to a text model", text("a sneaker"),
              grpc::StatusCode::INVALID_ARGUMENT, "text model"};
    c.request.set_model("tiny");
    c.request.mutable_image()->set_steps(10);
    cases.push_back(c);
  }
  {
    BadCase c{"image params, no model, no image model", text("a sneaker"),
              grpc::StatusCode::NOT_FOUND, "no image model"};
    c.request.mutable_image()->set_steps(10);
    cases.push_back(c);
  }
  for (const BadCase& c : cases) {
    StreamResult r = Run(c.request);
    EXPECT_EQ(r.status.error_code(), c.code) << c.name << ": " << r.status.error_message();
    EXPECT_NE(r.status.error_message().find(c.message_part), std::string::npos)
        << c.name << ": message was \"" << r.status.error_message() << "\"";
    EXPECT_EQ(r.deltas, 0) << c.name;
    EXPECT_FALSE(r.finished_seen) << c.name;
  }
  bg.join();
  ASSERT_TRUE(background.status.ok()) << background.status.error_message();
  const bool eos = background.finished.reason() == Finished::EOS;
  EXPECT_TRUE(eos || background.finished.usage().completion_tokens() == 100)
      << background.finished.DebugString();
}

TEST_F(GenerateE2ETest, ListModelsDescribesTheModel) {
  grpc::ClientContext ctx;
  tandem::v1::ListModelsResponse resp;
  ASSERT_TRUE(stub_->ListModels(&ctx, {}, &resp).ok());
  ASSERT_EQ(resp.models_size(), 1);
  const auto& m = resp.models(0);
  EXPECT_EQ(m.name(), "tiny");
  EXPECT_EQ(m.kind(), tandem::v1::MODEL_KIND_TEXT);
  EXPECT_TRUE(m.is_default());
  EXPECT_EQ(m.context_length(), 128);
  EXPECT_EQ(m.vocab_size(), 320);
  EXPECT_EQ(m.version(), 1);
  EXPECT_GT(m.parameters(), 0);
  ASSERT_EQ(m.devices_size(), 1);
  EXPECT_EQ(m.devices(0), "cpu");
}

TEST_F(GenerateE2ETest, TrainingWithoutStateDirAnswersFailedPrecondition) {
  auto training = tandem::v1::Training::NewStub(channel_);
  grpc::ClientContext ctx;
  tandem::v1::ListTrainJobsResponse resp;
  grpc::Status s = training->ListTrainJobs(&ctx, {}, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("--state_dir"), std::string::npos) << s.error_message();
}

TEST_F(GenerateE2ETest, MetricsEndpointCountsRequests) {
  ASSERT_TRUE(Run(TextRequest("the cat", 3)).status.ok());
  EXPECT_EQ(Run(TextRequest("", 0)).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  httplib::Client http("127.0.0.1", server_->metrics_port());
  auto res = http.Get("/metrics");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  const std::string& body = res->body;
  EXPECT_NE(body.find("tandem_generate_requests_total{code=\"OK\",kind=\"text\",model=\"tiny\"} 1"),
            std::string::npos)
      << body.substr(0, 2000);
  EXPECT_NE(body.find("code=\"INVALID_ARGUMENT\""), std::string::npos);
  EXPECT_NE(body.find("tandem_generated_tokens_total{model=\"tiny\"}"), std::string::npos);
  EXPECT_NE(body.find("tandem_time_to_first_token_seconds_bucket"), std::string::npos);
}

TEST_F(GenerateE2ETest, ShutdownLetsInFlightStreamsFinishThenRefusesNewCalls) {
  StreamResult inflight;
  std::thread t([&] { inflight = Run(TextRequest("the stars", 100, 1.0f, 5)); });
  // Wait until the stream is running on the device.
  auto deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    httplib::Client http("127.0.0.1", server_->metrics_port());
    auto res = http.Get("/metrics");
    if (res && res->body.find("tandem_requests_running{device=\"cpu\",model=\"tiny\"} 1") !=
                   std::string::npos) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(2));
  }
  server_->Shutdown(absl::Seconds(20));
  t.join();
  EXPECT_TRUE(inflight.status.ok()) << inflight.status.error_message();
  EXPECT_TRUE(inflight.finished_seen);
  StreamResult after = Run(TextRequest("the cat", 3), 5);
  EXPECT_EQ(after.status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace tandem

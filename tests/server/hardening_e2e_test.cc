// Hardening defaults, end to end: an oversized message is refused by the transport, a client that
// floods pings gets GOAWAY (ENHANCE_YOUR_CALM), a connection carries at most
// max_concurrent_streams calls, idle connections are closed, prompts, captions and stop strings
// are bounded in bytes before anything is tokenized, and a caption longer than the text encoder
// reads is cut by the documented rule, which the response reports.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "models/text/sentencepiece_tokenizer.h"
#include "models/text/tokenizer.h"
#include "server/api/server.h"
#include "server/core/worker_pool.h"
#include "tandem/v1/inference.grpc.pb.h"
#include "tests/server/device_hold.h"
#include "tests/server/e2e_fixture.h"
#include "tests/testing/test_model.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using tandem::v1::GenerateRequest;
using tandem::v1::GenerateResponse;

class HardeningE2ETest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(testing::MakeTempDir("tandem-hardening-e2e"));
    testing::WriteTinyModel(*root_ + "/models/tiny");
    testing::WriteTinyImageModel(*root_ + "/models/pixels");
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::Seconds(5));
  }

  void Start(const GrpcLimits& grpc = {}, const RequestLimits& limits = {}) {
    ServerOptions o = testing::LoopbackOptions(*root_ + "/models");
    o.default_model = "tiny";
    o.grpc = grpc;
    o.limits = limits;
    auto server = Server::Create(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = tandem::v1::Inference::NewStub(channel_);
  }

  struct Result {
    grpc::Status status;
    tandem::v1::Finished finished;
  };
  Result Run(const GenerateRequest& req, double deadline_s = 30) {
    Result r;
    r.status = testing::Generate(stub_.get(), req, deadline_s, &r.finished);
    return r;
  }
  static GenerateRequest Text(const std::string& prompt) { return testing::TextRequest(prompt); }
  static GenerateRequest Image(const std::string& caption) {
    GenerateRequest r;
    r.set_model("pixels");
    r.set_prompt(caption);
    r.mutable_image()->set_steps(2);
    r.mutable_image()->set_seed(1);
    return r;
  }

  static std::string* root_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tandem::v1::Inference::Stub> stub_;
};

std::string* HardeningE2ETest::root_ = nullptr;

TEST_F(HardeningE2ETest, AnOversizedMessageIsRefusedByTheTransport) {
  GrpcLimits g;
  g.max_receive_message_bytes = 32 << 10;
  Start(g);
  Result r = Run(Text(std::string(40 << 10, 'a')));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << r.status.error_message();
  EXPECT_TRUE(Run(Text("the cat")).status.ok()) << "the server serves on";
}

// Raw HTTP/2: the connection preface and an empty SETTINGS, then `pings` PING frames; returns
// the error code of the GOAWAY the server sends (-1 when none came within 10 s).
int PingFlood(int port, int pings) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  std::string out = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  auto frame = [&](uint8_t type, uint8_t flags, const std::string& payload) {
    const uint32_t n = static_cast<uint32_t>(payload.size());
    out += std::string{static_cast<char>(n >> 16), static_cast<char>(n >> 8),
                       static_cast<char>(n), static_cast<char>(type), static_cast<char>(flags),
                       0, 0, 0, 0};
    out += payload;
  };
  frame(0x4, 0, "");  // SETTINGS
  for (int i = 0; i < pings; ++i) frame(0x6, 0, std::string(8, static_cast<char>(i)));  // PING
  if (::write(fd, out.data(), out.size()) != static_cast<ssize_t>(out.size())) {
    ::close(fd);
    return -1;
  }
  std::string in;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < until) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[4096];
    const ssize_t got = ::read(fd, buf, sizeof buf);
    if (got <= 0) break;
    in.append(buf, static_cast<size_t>(got));
    // Walk the frames received so far.
    size_t at = 0;
    while (in.size() - at >= 9) {
      const auto* h = reinterpret_cast<const uint8_t*>(in.data() + at);
      const size_t len = (size_t{h[0]} << 16) | (size_t{h[1]} << 8) | h[2];
      if (in.size() - at < 9 + len) break;
      if (h[3] == 0x7 && len >= 8) {  // GOAWAY: last stream id, error code
        const uint8_t* e = h + 9 + 4;
        ::close(fd);
        return static_cast<int>((uint32_t{e[0]} << 24) | (uint32_t{e[1]} << 16) |
                                (uint32_t{e[2]} << 8) | e[3]);
      }
      at += 9 + len;
    }
  }
  ::close(fd);
  return -1;
}

TEST_F(HardeningE2ETest, APingFloodGetsGoaway) {
  Start();
  constexpr int kEnhanceYourCalm = 0xb;
  EXPECT_EQ(PingFlood(server_->port(), 20), kEnhanceYourCalm);
  EXPECT_TRUE(Run(Text("the cat")).status.ok()) << "other clients are served on";
}

TEST_F(HardeningE2ETest, AConnectionCarriesAtMostMaxConcurrentStreamsCalls) {
  GrpcLimits g;
  g.max_concurrent_streams = 2;
  Start(g);
  testing::DeviceHold hold(server_->pool()->loop(0));
  ASSERT_TRUE(hold.Hold());
  std::vector<Result> results(3);
  std::vector<std::thread> calls;
  for (int i = 0; i < 2; ++i) calls.emplace_back([&, i] { results[i] = Run(Text("the cat")); });
  for (int i = 0; i < 3000 && server_->pool()->pending() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // The third call on the same connection waits for a stream: the server never sees it.
  results[2] = Run(Text("the dog"), /*deadline_s=*/0.5);
  EXPECT_EQ(results[2].status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(server_->pool()->pending(), 2);
  hold.Release();
  for (auto& t : calls) t.join();
  EXPECT_TRUE(results[0].status.ok() && results[1].status.ok());
}

TEST_F(HardeningE2ETest, IdleConnectionsAreClosed) {
  GrpcLimits g;
  g.max_connection_idle_seconds = 1;
  Start(g);
  ASSERT_TRUE(Run(Text("the cat")).status.ok());
  ASSERT_EQ(channel_->GetState(false), GRPC_CHANNEL_READY);
  // The server's GOAWAY turns the client's channel idle.
  EXPECT_TRUE(channel_->WaitForStateChange(GRPC_CHANNEL_READY,
                                           std::chrono::system_clock::now() +
                                               std::chrono::seconds(10)));
  EXPECT_NE(channel_->GetState(false), GRPC_CHANNEL_READY);
  EXPECT_TRUE(Run(Text("the cat")).status.ok()) << "a new call reconnects";
}

TEST_F(HardeningE2ETest, PromptCaptionAndStopBytesAreBoundedBeforeTokenizing) {
  RequestLimits limits;
  limits.max_prompt_bytes = 1000;
  limits.max_caption_bytes = 200;
  limits.max_stop_bytes = 10;
  Start({}, limits);
  Result r = Run(Text(std::string(1001, 'a')));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("--max_prompt_bytes"), std::string::npos);
  // A 1 MB caption is refused on its size, before it is tokenized.
  r = Run(Image(std::string(1 << 20, 'a')));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("--max_caption_bytes"), std::string::npos)
      << r.status.error_message();
  GenerateRequest neg = Image("a square");
  neg.mutable_image()->set_negative_prompt(std::string(201, 'b'));
  EXPECT_EQ(Run(neg).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  GenerateRequest stop = Text("the cat");
  stop.mutable_text()->add_stop(std::string(11, 's'));
  EXPECT_EQ(Run(stop).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(HardeningE2ETest, ALongCaptionIsCutToTheEncoderAndTheResponseSaysSo) {
  Start();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      SentencePieceTokenizer::Load(*root_ + "/models/pixels/tokenizer.model");
  ASSERT_TRUE(tok.ok());
  absl::StatusOr<std::shared_ptr<const ModelEntry>> model =
      server_->registry()->Lookup("pixels", ModelKind::kImage);
  ASSERT_TRUE(model.ok());
  const int room = (*model)->dir.diffusion.text_seq_len - 1;
  const std::string caption = "a bright square on a dark ground beside a dark square on a bright "
                              "ground with another bright square";
  const int tokens = static_cast<int>((*tok)->Encode(caption).size());
  ASSERT_GT(tokens, room) << "the caption must be longer than the encoder reads";
  GenerateRequest req = Image(caption);
  req.mutable_image()->set_negative_prompt("dark");
  Result r = Run(req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.finished.usage().prompt_tokens_truncated(), tokens - room);
  EXPECT_EQ(r.finished.usage().negative_prompt_tokens_truncated(), 0);
  EXPECT_EQ(r.finished.usage().prompt_tokens(), room + 1);  // BOS + what was kept
  // A caption that fits loses nothing.
  const std::string short_caption = "sq";
  ASSERT_LE(static_cast<int>((*tok)->Encode(short_caption).size()), room);
  r = Run(Image(short_caption));
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.finished.usage().prompt_tokens_truncated(), 0);
}

}  // namespace
}  // namespace tandem

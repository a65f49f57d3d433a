// The operator's view of a real in-process server: the gRPC health service and /readyz while the
// models load, while serving and while draining; and what /metrics says about capacity, queues,
// refusals, model loads, the build and the process.
#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <memory>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "server/api/server.h"
#include "tandem/v1/inference.grpc.pb.h"
#include "server/core/worker_pool.h"
#include "tests/server/device_hold.h"
#include "tests/testing/test_model.h"

namespace tandem {
namespace {

using grpc::health::v1::HealthCheckResponse;

class OpsE2ETest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(testing::MakeTempDir("tandem-ops"));
    testing::WriteTinyModel(*root_ + "/models/tiny");
    testing::WriteTinyImageModel(*root_ + "/models/pix");
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*root_);
    delete root_;
  }

  ServerOptions Options(int max_pending = 64) {
    ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.metrics_listen = "127.0.0.1:0";
    o.models_dir = *root_ + "/models";
    o.devices = {"cpu"};
    o.max_sequences_per_device = 4;
    o.max_pending = max_pending;
    o.log_requests = false;
    return o;
  }

  void Start(ServerOptions o) {
    auto server = Server::Create(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = Channel(server_->port());
  }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::Seconds(5));
  }

  static std::shared_ptr<grpc::Channel> Channel(int port) {
    return grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                               grpc::InsecureChannelCredentials());
  }
  static HealthCheckResponse::ServingStatus Health(const std::shared_ptr<grpc::Channel>& ch) {
    auto stub = grpc::health::v1::Health::NewStub(ch);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::health::v1::HealthCheckRequest req;
    HealthCheckResponse resp;
    grpc::Status s = stub->Check(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.status();
  }
  static int HttpStatus(int port, const std::string& path) {
    httplib::Client http("127.0.0.1", port);
    auto res = http.Get(path.c_str());
    return res ? res->status : -1;
  }
  std::string Scrape() {
    httplib::Client http("127.0.0.1", server_->metrics_port());
    auto res = http.Get("/metrics");
    EXPECT_TRUE(res && res->status == 200);
    return res ? res->body : "";
  }
  static grpc::Status Generate(const std::shared_ptr<grpc::Channel>& ch, const std::string& model,
                               int max_tokens) {
    auto stub = tandem::v1::Inference::NewStub(ch);
    grpc::ClientContext ctx;
    tandem::v1::GenerateRequest req;
    req.set_model(model);
    req.set_prompt("the cat");
    req.mutable_text()->set_max_tokens(max_tokens);
    req.mutable_text()->set_temperature(0);
    auto reader = stub->Generate(&ctx, req);
    tandem::v1::GenerateResponse resp;
    while (reader->Read(&resp)) {
    }
    return reader->Finish();
  }

  static std::string* root_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

std::string* OpsE2ETest::root_ = nullptr;

TEST_F(OpsE2ETest, NotServingWhileModelsLoadThenServing) {
  ServerOptions o = Options();
  bool checked = false;
  o.on_loading = [&](int port, int metrics_port) {
    // Create is blocked here, before the models load: the port already answers.
    auto ch = Channel(port);
    EXPECT_EQ(Health(ch), HealthCheckResponse::NOT_SERVING);
    grpc::Status s = Generate(ch, "tiny", 3);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "loading")) << s.error_message();
    EXPECT_EQ(HttpStatus(metrics_port, "/healthz"), 200);
    EXPECT_EQ(HttpStatus(metrics_port, "/readyz"), 503);
    checked = true;
  };
  Start(o);
  EXPECT_TRUE(checked);
  EXPECT_EQ(Health(channel_), HealthCheckResponse::SERVING);
  EXPECT_EQ(HttpStatus(server_->metrics_port(), "/readyz"), 200);
  EXPECT_TRUE(Generate(channel_, "tiny", 3).ok());
}

TEST_F(OpsE2ETest, DrainingIsNotReadyWhileStreamsFinish) {
  Start(Options());
  const int metrics_port = server_->metrics_port();
  // A long stream: 100 denoising steps of 4 images.
  grpc::Status stream;
  std::thread client([&] {
    auto stub = tandem::v1::Inference::NewStub(channel_);
    grpc::ClientContext ctx;
    tandem::v1::GenerateRequest req;
    req.set_model("pix");
    req.set_prompt("a cat");
    req.mutable_image()->set_steps(100);
    req.mutable_image()->set_num_images(4);
    auto reader = stub->Generate(&ctx, req);
    tandem::v1::GenerateResponse resp;
    while (reader->Read(&resp)) {
    }
    stream = reader->Finish();
  });
  // Wait until it runs on the device.
  const std::string running = "tandem_image_slots_used{device=\"cpu\",model=\"pix\"} 4";
  for (int i = 0; i < 5000 && !absl::StrContains(Scrape(), running); ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  std::thread stopper([&] { server_->Shutdown(absl::Seconds(20)); });
  int readyz = 200;
  for (int i = 0; i < 2000 && readyz == 200; ++i) {
    readyz = HttpStatus(metrics_port, "/readyz");
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(readyz, 503);
  stopper.join();
  client.join();
  EXPECT_TRUE(stream.ok()) << stream.error_message();
}

TEST_F(OpsE2ETest, MetricsSayCapacityQueuesRefusalsLoadsBuildAndProcess) {
  Start(Options());
  ASSERT_TRUE(Generate(channel_, "tiny", 3).ok());
  EXPECT_EQ(Generate(channel_, "tiny", 100000).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Generate(channel_, "nope", 3).error_code(), grpc::StatusCode::NOT_FOUND);
  const std::string body = Scrape();
  for (const char* line : {
           "tandem_kv_cache_slots_capacity{device=\"cpu\",model=\"tiny\"} 4\n",
           "tandem_kv_cache_slots_used{device=\"cpu\",model=\"tiny\"} 0\n",
           "tandem_requests_waiting{device=\"cpu\",model=\"tiny\"} 0\n",
           "tandem_requests_running{device=\"cpu\",model=\"tiny\"} 0\n",
           "tandem_requests_rejected_total{model=\"tiny\",reason=\"invalid_argument\"} 1\n",
           "tandem_requests_rejected_total{model=\"unknown\",reason=\"not_found\"} 1\n",
           "tandem_model_load_seconds_count{model=\"tiny\",reason=\"load\"} 1\n",
           "tandem_model_parameters{kind=\"text\",model=\"tiny\",version=\"1\"} ",
           "tandem_build_info{cuda=\"none\",torch=\"",
           "\nprocess_resident_memory_bytes ",
           "\nprocess_open_fds ",
           "\nprocess_cpu_seconds_total ",
       }) {
    EXPECT_TRUE(absl::StrContains(body, line)) << line << " missing from\n" << body.substr(0, 3000);
  }
}

TEST_F(OpsE2ETest, RefusalsPastMaxPendingAreCountedByReason) {
  Start(Options(/*max_pending=*/1));
  // The device held, the first request stays in hand however fast the tiny model would be.
  testing::DeviceHold hold(server_->pool()->loop(0));
  ASSERT_TRUE(hold.Hold());
  auto stub = tandem::v1::Inference::NewStub(channel_);
  grpc::ClientContext ctx;
  tandem::v1::GenerateRequest req;
  req.set_model("tiny");
  req.set_prompt("the cat");
  req.mutable_text()->set_max_tokens(100);
  auto reader = stub->Generate(&ctx, req);
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (server_->pool()->pending() < 1 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  ASSERT_EQ(server_->pool()->pending(), 1) << "the first request is in hand";
  EXPECT_EQ(Generate(channel_, "tiny", 3).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  ctx.TryCancel();
  hold.Release();
  reader->Finish();
  EXPECT_TRUE(absl::StrContains(
      Scrape(), "tandem_requests_rejected_total{model=\"tiny\",reason=\"max_pending\"} 1\n"));
}

}  // namespace
}  // namespace tandem

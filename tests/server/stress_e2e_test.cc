// A bounded stress test: rounds of several hundred concurrent streams — text and image, some
// cancelled at a random moment, some with short deadlines, some from clients that stop reading
// and then go away — while a training job runs. Every stream ends with a status of the expected
// kinds, the server stays up (health SERVING, a request served after), every reactor is
// destroyed, and the resident memory after the rounds is within kMemoryBound of what it was
// after a warm-up round. The negative control leaks a known amount per stream through the same
// measurement and must trip the bound.
#include <grpcpp/grpcpp.h>
#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "server/api/reactor_count.h"
#include "server/api/server.h"
#include "tandem/v1/inference.grpc.pb.h"
#include "tandem/v1/training.grpc.pb.h"
#include "tests/server/e2e_fixture.h"
#include "tests/testing/test_model.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using tandem::v1::GenerateRequest;
using tandem::v1::GenerateResponse;

constexpr int kStreams = 300;
constexpr int64_t kMemoryBound = 48 << 20;  // bytes of growth tolerated after the warm-up
constexpr int64_t kLeakPerStream = 512 << 10;  // the negative control's leak: 150 MB a round

int64_t ResidentBytes() {
  malloc_trim(0);  // freed heap back to the system, so RSS counts what is still held
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * ::sysconf(_SC_PAGESIZE);
}

class StressE2ETest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(testing::MakeTempDir("tandem-stress-e2e"));
    testing::WriteTinyModel(*root_ + "/models/tiny");
    testing::WriteTinyImageModel(*root_ + "/models/pixels");
    fs::create_directories(*root_ + "/data");
    std::ofstream out(*root_ + "/data/fortunes.txt");
    for (int i = 0; i < 80; ++i) out << "The cat number " << i % 9 << " sleeps.\n%\n";
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }

  void SetUp() override {
    ServerOptions o = testing::LoopbackOptions(*root_ + "/models");
    o.default_model = "tiny";
    o.data_dir = *root_ + "/data";
    o.state_dir = *root_ + "/state-" +
                  ::testing::UnitTest::GetInstance()->current_test_info()->name();
    o.max_pending = 512;
    o.max_queue_per_model = 200;
    auto server = Server::Create(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = tandem::v1::Inference::NewStub(channel_);
    StartTrainingJob();
  }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::Seconds(5));
  }

  // A long job that trains through every round.
  void StartTrainingJob() {
    tandem::v1::TrainJobSpec spec = testing::TinyTextJob("fortunes.txt", 1000000);
    spec.mutable_hyperparameters()->set_eval_every(1000000);
    ASSERT_TRUE(testing::TrainingClient(channel_).Submit(spec, &job_).ok());
  }
  bool TrainingRuns() {
    return testing::TrainingClient(channel_).Get(job_.id()).state() == tandem::v1::RUNNING;
  }

  // One round of kStreams concurrent streams; the final status of each, by code name.
  std::map<std::string, int> Round(uint64_t seed, int64_t leak_per_stream = 0) {
    std::vector<std::thread> clients;
    std::mutex mu;
    std::map<std::string, int> codes;
    for (int i = 0; i < kStreams; ++i) {
      clients.emplace_back([&, i] {
        std::mt19937 rng(static_cast<uint32_t>(seed * 1000 + i));
        const grpc::Status s = OneStream(rng);
        if (leak_per_stream > 0) {
          // The negative control: memory held past the round, every page touched.
          std::string* leak = new std::string(static_cast<size_t>(leak_per_stream), 'x');
          (void)leak;
        }
        std::lock_guard<std::mutex> lock(mu);
        ++codes[absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code()))];
      });
    }
    for (auto& t : clients) t.join();
    return codes;
  }

  grpc::Status OneStream(std::mt19937& rng) {
    GenerateRequest req;
    const bool image = rng() % 3 == 0;
    if (image) {
      req.set_model("pixels");
      req.set_prompt("a bright square");
      req.mutable_image()->set_steps(2 + static_cast<int>(rng() % 10));
      req.mutable_image()->set_preview_every(static_cast<int>(rng() % 3));
    } else {
      req.set_prompt("the cat sat on the mat");
      req.mutable_text()->set_max_tokens(1 + static_cast<int>(rng() % 60));
      req.mutable_text()->set_temperature(0.8f);
    }
    grpc::ClientContext ctx;
    const int behaviour = static_cast<int>(rng() % 10);
    const auto now = std::chrono::system_clock::now();
    ctx.set_deadline(behaviour < 2 ? now + std::chrono::milliseconds(10 + rng() % 200)
                                   : now + std::chrono::seconds(120));
    std::thread canceller;
    if (behaviour >= 2 && behaviour < 4) {
      const int after_ms = static_cast<int>(rng() % 300);
      canceller = std::thread([&ctx, after_ms] {
        std::this_thread::sleep_for(std::chrono::milliseconds(after_ms));
        ctx.TryCancel();
      });
    }
    auto reader = stub_->Generate(&ctx, req);
    if (behaviour == 4) {
      // Stops reading after the first message, then goes away.
      GenerateResponse first;
      reader->Read(&first);
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 500));
      ctx.TryCancel();
    }
    grpc::Status s = testing::Drain(reader.get());
    if (canceller.joinable()) canceller.join();
    return s;
  }

  // Runs a warm-up round and `rounds` more; the growth of resident memory across those.
  int64_t MemoryGrowth(int rounds, int64_t leak_per_stream) {
    const ReactorCounts before = GetReactorCounts();
    ExpectEveryStreamEnded(Round(1), "warm-up");
    const int64_t warm = ResidentBytes();
    for (int r = 0; r < rounds; ++r) {
      ExpectEveryStreamEnded(Round(2 + r, leak_per_stream), absl::StrCat("round ", r + 1));
    }
    const int64_t after = ResidentBytes();
    // Every reactor created in the rounds is destroyed (the last ones may still be finishing).
    for (int i = 0; i < 500 && GetReactorCounts().live() > before.live(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(GetReactorCounts().live(), before.live());
    EXPECT_GE(GetReactorCounts().created - before.created, (rounds + 1) * int64_t{kStreams} / 2);
    return after - warm;
  }

  static void ExpectEveryStreamEnded(const std::map<std::string, int>& codes,
                                     const std::string& round) {
    int total = 0;
    for (const auto& [code, n] : codes) {
      total += n;
      EXPECT_TRUE(code == "OK" || code == "CANCELLED" || code == "DEADLINE_EXCEEDED" ||
                  code == "RESOURCE_EXHAUSTED")
          << round << ": " << n << " streams ended " << code;
    }
    EXPECT_EQ(total, kStreams) << round;
    std::string line;
    for (const auto& [code, n] : codes) absl::StrAppend(&line, " ", code, "=", n);
    std::printf("stress: %s:%s\n", round.c_str(), line.c_str());
    EXPECT_GT(codes.count("OK") ? codes.at("OK") : 0, kStreams / 4) << round;
  }

  void ExpectServerUp() {
    auto health = grpc::health::v1::Health::NewStub(channel_);
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckResponse resp;
    ASSERT_TRUE(health->Check(&ctx, {}, &resp).ok());
    EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
    EXPECT_TRUE(testing::Generate(stub_.get(), testing::TextRequest("the cat")).ok());
    EXPECT_TRUE(TrainingRuns()) << "the training job stopped";
  }

  static std::string* root_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tandem::v1::Inference::Stub> stub_;
  tandem::v1::TrainJob job_;
};

std::string* StressE2ETest::root_ = nullptr;

TEST_F(StressE2ETest, HundredsOfStreamsEndCleanlyAndMemoryReturns) {
  const int64_t growth = MemoryGrowth(/*rounds=*/3, /*leak_per_stream=*/0);
  EXPECT_LT(growth, kMemoryBound) << "resident memory grew " << (growth >> 20) << " MB";
  std::printf("stress: %d streams x 4 rounds; resident memory after the rounds: %+lld MB vs the "
              "warm-up (bound %lld MB)\n",
              kStreams, static_cast<long long>(growth >> 20),
              static_cast<long long>(kMemoryBound >> 20));
  ExpectServerUp();
}

TEST_F(StressE2ETest, NegativeControlALeakTripsTheBound) {
  const int64_t growth = MemoryGrowth(/*rounds=*/1, kLeakPerStream);
  EXPECT_GE(growth, kMemoryBound) << "a leak of " << ((kLeakPerStream * kStreams) >> 20)
                                  << " MB went unseen: the bound detects nothing";
  ExpectServerUp();
}

}  // namespace
}  // namespace tandem

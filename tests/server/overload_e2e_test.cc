// Overload and time, end to end: queue caps refuse exactly the excess at once, a request whose
// deadline passes while it waits never reaches the device, a cancel in every window of a
// request's life (queued, prefilling, decoding, denoising, writing to a client that stopped
// reading) ends the call CANCELLED and frees its slot before the device's next step, the
// server's deadline cap ends a call DEADLINE_EXCEEDED — and every reactor created is destroyed.
// Windows are made exact by holding the device loop (tests/server/device_hold.h).
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "server/api/reactor_count.h"
#include "server/api/server.h"
#include "server/core/model_registry.h"
#include "server/core/worker_pool.h"
#include "server/metrics/metrics.h"
#include "tandem/v1/inference.grpc.pb.h"
#include "tests/server/device_hold.h"
#include "tests/server/e2e_fixture.h"
#include "tests/testing/test_model.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using tandem::v1::GenerateRequest;
using tandem::v1::GenerateResponse;
using testing::DeviceHold;

constexpr int kSlots = 4;

class OverloadE2ETest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(testing::MakeTempDir("tandem-overload-e2e"));
    testing::WriteTinyModel(*root_ + "/models/tiny");
    testing::WriteTinyImageModel(*root_ + "/models/pixels");
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }

  void Start(int max_pending = 64, int max_queue = 64, int max_request_seconds = 600) {
    ServerOptions o = testing::LoopbackOptions(*root_ + "/models");
    o.default_model = "tiny";
    o.max_sequences_per_device = kSlots;
    o.max_images_per_device = kSlots;
    o.max_pending = max_pending;
    o.max_queue_per_model = max_queue;
    o.prefill_token_budget = 4;  // long prompts prefill over many iterations
    o.grpc.max_request_seconds = max_request_seconds;
    auto server = Server::Create(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = tandem::v1::Inference::NewStub(channel_);
  }
  void SetUp() override { baseline_ = GetReactorCounts(); }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::Seconds(5));
    server_.reset();
    // Every Generate reactor the server created has been destroyed.
    const ReactorCounts now = GetReactorCounts();
    EXPECT_EQ(now.live(), baseline_.live())
        << (now.created - baseline_.created) << " created, "
        << (now.destroyed - baseline_.destroyed) << " destroyed";
  }

  DeviceLoop* loop() { return server_->pool()->loop(0); }

  static GenerateRequest Text(const std::string& prompt, int max_tokens) {
    GenerateRequest r;
    r.set_prompt(prompt);
    r.mutable_text()->set_max_tokens(max_tokens);
    r.mutable_text()->set_seed(3);
    return r;
  }
  static GenerateRequest Image(int steps) {
    GenerateRequest r;
    r.set_model("pixels");
    r.set_prompt("a bright square");
    r.mutable_image()->set_steps(steps);
    r.mutable_image()->set_seed(5);
    return r;
  }

  // One call, read to the end.
  grpc::Status Run(const GenerateRequest& req, grpc::ClientContext* ctx) {
    auto reader = stub_->Generate(ctx, req);
    return testing::Drain(reader.get());
  }

  double Counter(prometheus::Family<prometheus::Counter>& family,
                 const std::map<std::string, std::string>& labels) {
    return family.Add(labels).Value();
  }
  double Requests(const std::string& model, const char* kind, const char* code) {
    return Counter(server_->metrics()->requests, {{"model", model}, {"kind", kind}, {"code", code}});
  }
  // Free KV slots of the text model and free samples of the image model, read on the loop.
  std::pair<int, int> FreeOnDevice() {
    std::pair<int, int> free;
    DeviceHold::RunOnLoop(loop(), [&] {
      free.first = (*server_->registry()->Lookup("tiny", ModelKind::kText))->text[0]->free_slots();
      free.second =
          (*server_->registry()->Lookup("pixels", ModelKind::kImage))->image[0]->free_samples();
    });
    return free;
  }
  // Waits until `n` requests are in the pool's hands (submitted, not ended).
  bool WaitPending(int n) {
    for (int i = 0; i < 3000; ++i) {
      if (server_->pool()->pending() >= n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return false;
  }

  // Cancels a call while the device is held `iterations` loop iterations after it was
  // submitted, then checks it ends CANCELLED and its slot is free before the next step.
  void CancelInWindow(const GenerateRequest& req, int iterations, const char* kind) {
    const std::string model = req.model().empty() ? "tiny" : req.model();
    const double cancelled_before = Requests(model, kind, "CANCELLED");
    DeviceHold first(loop());
    ASSERT_TRUE(first.Hold());
    grpc::ClientContext ctx;
    grpc::Status status;
    std::thread call([&] { status = Run(req, &ctx); });
    ASSERT_TRUE(WaitPending(1));
    DeviceHold window(loop());
    // Queued behind the first hold: the second blocks the loop `iterations` iterations later.
    std::thread second([&] { ASSERT_TRUE(window.Hold(iterations)); });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    first.Release();
    second.join();
    ctx.TryCancel();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the server hears it
    window.Release();
    call.join();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
    // One iteration ran since the release: the slot is already free.
    EXPECT_EQ(FreeOnDevice(), std::make_pair(kSlots, kSlots));
    for (int i = 0; i < 200 && Requests(model, kind, "CANCELLED") == cancelled_before; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    EXPECT_EQ(Requests(model, kind, "CANCELLED"), cancelled_before + 1);
  }

  static std::string* root_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tandem::v1::Inference::Stub> stub_;
  ReactorCounts baseline_;
};

std::string* OverloadE2ETest::root_ = nullptr;

// N + k concurrent requests against a cap of N, with the device held so none can leave.
void ExpectExactlyTheExcessRefused(int cap, int extra, std::function<grpc::Status(int)> call,
                                   DeviceLoop* loop) {
  DeviceHold hold(loop);
  ASSERT_TRUE(hold.Hold());
  std::vector<grpc::Status> statuses(cap + extra);
  std::vector<std::thread> threads;
  std::atomic<int> refused{0};
  for (int i = 0; i < cap + extra; ++i) {
    threads.emplace_back([&, i] {
      statuses[i] = call(i);
      if (statuses[i].error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++refused;
    });
  }
  // The excess is refused at once, while the device is still held.
  for (int i = 0; i < 5000 && refused.load() < extra; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(refused.load(), extra);
  hold.Release();
  for (auto& th : threads) th.join();
  int ok = 0, exhausted = 0;
  for (const grpc::Status& s : statuses) {
    if (s.ok()) ++ok;
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++exhausted;
  }
  EXPECT_EQ(ok, cap);
  EXPECT_EQ(exhausted, extra);
}

TEST_F(OverloadE2ETest, QueueCapRefusesExactlyTheExcessAtOnce) {
  Start(/*max_pending=*/64, /*max_queue=*/5);
  ExpectExactlyTheExcessRefused(5, 3, [&](int i) {
    grpc::ClientContext ctx;
    return Run(Text(absl::StrCat("the cat ", i), 3), &ctx);
  }, loop());
}

TEST_F(OverloadE2ETest, PendingCapRefusesExactlyTheExcessAtOnce) {
  Start(/*max_pending=*/6, /*max_queue=*/64);
  ExpectExactlyTheExcessRefused(6, 4, [&](int i) {
    grpc::ClientContext ctx;
    return i % 2 ? Run(Text("the dog", 3), &ctx) : Run(Image(2), &ctx);
  }, loop());
}

TEST_F(OverloadE2ETest, ADeadlinePassingInTheQueueNeverReachesTheDevice) {
  Start();
  const double prompt_tokens =
      Counter(server_->metrics()->prompt_tokens, {{"model", "tiny"}});
  DeviceHold hold(loop());
  ASSERT_TRUE(hold.Hold());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  grpc::Status status;
  std::thread call([&] { status = Run(Text("the cat sat", 20), &ctx); });
  // In hand and waiting on the held device...
  for (int i = 0; i < 5000 && server_->pool()->pending() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(server_->pool()->pending(), 1);
  call.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // ...past its deadline on the server's clock too (it may trail the client's by the
  // transport's delay on a loaded machine).
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  hold.Release();
  // It leaves at the loop's next iteration, without having started: prompt tokens are counted
  // when a request starts on the device, and no slot was taken.
  for (int i = 0; i < 2000 && server_->pool()->pending() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(server_->pool()->pending(), 0);
  EXPECT_EQ(Counter(server_->metrics()->prompt_tokens, {{"model", "tiny"}}), prompt_tokens);
  EXPECT_EQ(FreeOnDevice(), std::make_pair(kSlots, kSlots));
}

TEST_F(OverloadE2ETest, CancelWhileQueued) {
  Start();
  CancelInWindow(Text("the cat", 50), 0, "text");
}

TEST_F(OverloadE2ETest, CancelWhilePrefilling) {
  Start();
  // ~30 prompt tokens, prefilled 4 per iteration: after 2 iterations it is still prefilling.
  CancelInWindow(Text("the cat sat on the mat and the dog ran far away from the river bank", 50),
                 2, "text");
}

TEST_F(OverloadE2ETest, CancelWhileDecoding) {
  Start();
  CancelInWindow(Text("the", 100), 3, "text");
}

TEST_F(OverloadE2ETest, CancelWhileDenoising) {
  Start();
  CancelInWindow(Image(50), 3, "image");
}

TEST_F(OverloadE2ETest, CancelWhileWritingToAClientThatStoppedReading) {
  Start();
  // A client window of 1 KiB that never grows: the stream's writes stall once it is full.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  auto channel = grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                           grpc::InsecureChannelCredentials(), args);
  auto stub = tandem::v1::Inference::NewStub(channel);
  const double cancelled_before = Requests("pixels", "image", "CANCELLED");
  grpc::ClientContext ctx;
  GenerateRequest req = Image(40);
  req.mutable_image()->set_preview_every(1);  // a preview PNG every step: far more than 1 KiB
  auto reader = stub->Generate(&ctx, req);
  GenerateResponse first;
  ASSERT_TRUE(reader->Read(&first));  // then it stops reading
  // The device finishes the request; the reactor is left with writes the client does not take.
  for (int i = 0; i < 2000 && server_->pool()->pending() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(server_->pool()->pending(), 0) << "the request should have left the device";
  EXPECT_EQ(GetReactorCounts().live() - baseline_.live(), 1) << "the reactor is still writing";
  ctx.TryCancel();
  for (int i = 0; i < 2000 && GetReactorCounts().live() > baseline_.live(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(GetReactorCounts().live(), baseline_.live()) << "the reactor was not destroyed";
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(Requests("pixels", "image", "CANCELLED"), cancelled_before + 1);
}

TEST_F(OverloadE2ETest, TheServersDeadlineCapEndsALongCall) {
  Start(64, 64, /*max_request_seconds=*/1);
  DeviceHold hold(loop());
  ASSERT_TRUE(hold.Hold());
  grpc::ClientContext ctx;  // no deadline of its own
  grpc::Status status;
  std::thread call([&] { status = Run(Text("the cat", 50), &ctx); });
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  hold.Release();
  call.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_NE(status.error_message().find("--max_request_seconds"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(FreeOnDevice(), std::make_pair(kSlots, kSlots));
}

}  // namespace
}  // namespace tandem

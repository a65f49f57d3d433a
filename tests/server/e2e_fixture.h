// What the end-to-end suites added for issue 11 share: a quiet in-process server on a loopback
// port, calls read to their end, and a Training client that submits a tiny text job and polls
// it. Header-only, for tandem_e2e_tests. Failures are test failures (EXPECT), not statuses.
#ifndef TANDEM_TESTS_SERVER_E2E_FIXTURE_H_
#define TANDEM_TESTS_SERVER_E2E_FIXTURE_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/api/server.h"
#include "tandem/v1/inference.grpc.pb.h"
#include "tandem/v1/training.grpc.pb.h"

namespace tandem::testing {

// A server of `models_dir` on 127.0.0.1 (a free port), without metrics, on the CPU, with the
// request log off; training off unless the caller sets state_dir.
inline ServerOptions LoopbackOptions(const std::string& models_dir) {
  ServerOptions o;
  o.listen = "127.0.0.1:0";
  o.metrics_listen = "";
  o.models_dir = models_dir;
  o.devices = {"cpu"};
  o.train_memory_limit_mb = 1024;
  o.log_requests = false;
  return o;
}

// A started server and a plaintext channel to it (the test fails when it does not start).
struct RunningServer {
  std::unique_ptr<Server> server;
  std::shared_ptr<grpc::Channel> channel;

  explicit RunningServer(const ServerOptions& options) {
    absl::StatusOr<std::unique_ptr<Server>> created = Server::Create(options);
    EXPECT_TRUE(created.ok()) << created.status();
    if (!created.ok()) return;
    server = *std::move(created);
    channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server->port()),
                                  grpc::InsecureChannelCredentials());
  }
  ~RunningServer() {
    if (server) server->Shutdown(absl::Seconds(5));
  }
  bool ok() const { return server != nullptr; }
};

// Reads a Generate stream to its end: its status, and its Finished event into `finished`.
inline grpc::Status Drain(grpc::ClientReader<tandem::v1::GenerateResponse>* reader,
                          tandem::v1::Finished* finished = nullptr) {
  tandem::v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    if (finished && resp.has_finished()) *finished = resp.finished();
  }
  return reader->Finish();
}

// One Generate call with a deadline of `deadline_s`, read to its end.
inline grpc::Status Generate(tandem::v1::Inference::Stub* stub,
                             const tandem::v1::GenerateRequest& req, double deadline_s = 30,
                             tandem::v1::Finished* finished = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(deadline_s * 1000)));
  auto reader = stub->Generate(&ctx, req);
  return Drain(reader.get(), finished);
}

// A short greedy text request.
inline tandem::v1::GenerateRequest TextRequest(const std::string& prompt, int max_tokens = 4) {
  tandem::v1::GenerateRequest r;
  r.set_prompt(prompt);
  r.mutable_text()->set_max_tokens(max_tokens);
  return r;
}

// A tiny Llama job on the text dataset `dataset` (vocab 300, width 32, one layer).
inline tandem::v1::TrainJobSpec TinyTextJob(const std::string& dataset, int64_t steps) {
  tandem::v1::TrainJobSpec spec;
  spec.set_kind(tandem::v1::TRAIN_KIND_TEXT);
  spec.set_dataset(dataset);
  auto* m = spec.mutable_text_model();
  m->set_vocab_size(300);
  m->set_dim(32);
  m->set_layers(1);
  m->set_heads(4);
  m->set_seq_len(16);
  auto* h = spec.mutable_hyperparameters();
  h->set_steps(steps);
  h->set_batch_size(2);
  return spec;
}

inline bool Ended(const tandem::v1::TrainJob& j) {
  return j.state() == tandem::v1::SUCCEEDED || j.state() == tandem::v1::FAILED ||
         j.state() == tandem::v1::CANCELLED;
}

// The Training RPCs a test drives, on `channel`.
class TrainingClient {
 public:
  explicit TrainingClient(const std::shared_ptr<grpc::Channel>& channel)
      : stub_(tandem::v1::Training::NewStub(channel)) {}

  grpc::Status Submit(const tandem::v1::TrainJobSpec& spec, tandem::v1::TrainJob* job) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    tandem::v1::SubmitTrainJobRequest req;
    *req.mutable_spec() = spec;
    return stub_->SubmitTrainJob(&ctx, req, job);
  }
  tandem::v1::TrainJob Get(const std::string& id, bool history = false) {
    grpc::ClientContext ctx;
    tandem::v1::GetTrainJobRequest req;
    req.set_id(id);
    req.set_include_history(history);
    tandem::v1::TrainJob job;
    EXPECT_TRUE(stub_->GetTrainJob(&ctx, req, &job).ok());
    return job;
  }
  grpc::Status List(tandem::v1::ListTrainJobsResponse* out) {
    grpc::ClientContext ctx;
    return stub_->ListTrainJobs(&ctx, {}, out);
  }
  // Polls until `pred(job)` or `seconds` pass (a test failure); the last job seen.
  template <typename Pred>
  tandem::v1::TrainJob WaitFor(const std::string& id, Pred pred, double seconds = 60) {
    const absl::Time end = absl::Now() + absl::Seconds(seconds);
    tandem::v1::TrainJob job;
    while (absl::Now() < end) {
      job = Get(id);
      if (pred(job)) return job;
      absl::SleepFor(absl::Milliseconds(10));
    }
    ADD_FAILURE() << "timed out; job is " << job.ShortDebugString().substr(0, 400);
    return job;
  }
  tandem::v1::Training::Stub* stub() { return stub_.get(); }

 private:
  std::unique_ptr<tandem::v1::Training::Stub> stub_;
};

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_SERVER_E2E_FIXTURE_H_

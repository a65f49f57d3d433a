// Faults, end to end: writes that fail (ENOSPC, EIO: base/io_faults.h) while a job writes its
// checkpoints, its exports or the job database; a damaged or locked job store; a state folder
// another server holds; model folders with lying safetensors headers, wrong-shaped weights or
// truncated files. Each time the error is clear and names the job or model, the previous
// checkpoint stays intact, nothing else stops, and the server serves on.
#include <grpcpp/grpcpp.h>
#include <sqlite3.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "base/io_faults.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/api/server.h"
#include "tests/server/e2e_fixture.h"
#include "tandem/v1/inference.grpc.pb.h"
#include "tandem/v1/training.grpc.pb.h"
#include "tests/testing/test_model.h"
#include "trainer/checkpoint.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using tandem::v1::TrainJob;
using tandem::v1::TrainJobSpec;
using testing::Ended;

class FaultsE2ETest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(testing::MakeTempDir("tandem-faults-e2e"));
    testing::WriteTinyModel(*root_ + "/models/tiny");
    fs::create_directories(*root_ + "/data");
    std::ofstream out(*root_ + "/data/fortunes.txt");
    const char* subjects[] = {"The cat", "A dog", "My friend", "The river"};
    for (int i = 0; i < 80; ++i) out << subjects[i % 4] << " waits on day " << i % 7 << ".\n%\n";
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  void TearDown() override {
    DisarmIoFaults();
    StopServer();
  }

  void StartServer(const std::string& state, const std::string& models = "models") {
    ServerOptions o = testing::LoopbackOptions(*root_ + "/" + models);
    o.data_dir = *root_ + "/data";
    o.state_dir = state.empty() ? "" : *root_ + "/" + state;
    running_ = std::make_unique<testing::RunningServer>(o);
    ASSERT_TRUE(running_->ok());
    training_ = std::make_unique<testing::TrainingClient>(running_->channel);
    inference_ = tandem::v1::Inference::NewStub(running_->channel);
  }
  void StopServer() { running_.reset(); }
  Server* server() { return running_->server.get(); }

  static TrainJobSpec Spec(int64_t steps) {
    TrainJobSpec spec = testing::TinyTextJob("fortunes.txt", steps);
    auto* h = spec.mutable_hyperparameters();
    h->set_warmup_steps(1);
    h->set_eval_every(10);
    h->set_checkpoint_every(4);
    h->set_seed(3);
    return spec;
  }
  grpc::Status Submit(const TrainJobSpec& spec, TrainJob* job) {
    return training_->Submit(spec, job);
  }
  TrainJob Get(const std::string& id, bool history = false) { return training_->Get(id, history); }
  template <typename Pred>
  TrainJob WaitFor(const std::string& id, Pred pred) {
    return training_->WaitFor(id, pred);
  }
  grpc::Status Generate(const std::string& model = "") {
    tandem::v1::GenerateRequest req = testing::TextRequest("the cat");
    req.set_model(model);
    return testing::Generate(inference_.get(), req);
  }
  std::string Checkpoints(const TrainJob& job, const std::string& state) {
    return absl::StrCat(*root_, "/", state, "/jobs/", job.id(), "/checkpoints");
  }

  // Runs a job until its first checkpoint, arms `rules`, and returns the job once it ended.
  TrainJob FailAfterFirstCheckpoint(const std::string& rules, int64_t steps = 40) {
    TrainJob job;
    EXPECT_TRUE(Submit(Spec(steps), &job).ok());
    WaitFor(job.id(), [](const TrainJob& j) { return j.checkpoint_step() >= 4 || Ended(j); });
    EXPECT_TRUE(ArmIoFaults(rules).ok());
    return WaitFor(job.id(), Ended);
  }

  static std::string* root_;
  std::unique_ptr<testing::RunningServer> running_;
  std::unique_ptr<testing::TrainingClient> training_;
  std::unique_ptr<tandem::v1::Inference::Stub> inference_;
};

std::string* FaultsE2ETest::root_ = nullptr;

TEST_F(FaultsE2ETest, AFullDiskWhileCheckpointingFailsTheJobAndKeepsThePreviousCheckpoint) {
  StartServer("state-enospc");
  TrainJob job = FailAfterFirstCheckpoint("write@/checkpoints/=ENOSPC");
  EXPECT_EQ(job.state(), tandem::v1::FAILED);
  EXPECT_TRUE(absl::StrContains(job.error(), "writing a checkpoint")) << job.error();
  EXPECT_TRUE(absl::StrContains(job.error(), std::strerror(ENOSPC))) << job.error();
  EXPECT_GE(IoFaultsFired(), 1);
  DisarmIoFaults();
  // Every checkpoint left on disk verifies, and no half-written folder is left behind.
  const std::string dir = Checkpoints(job, "state-enospc");
  std::vector<int64_t> steps = ListCheckpointSteps(dir);
  ASSERT_FALSE(steps.empty());
  EXPECT_EQ(steps.back(), job.checkpoint_step());
  for (int64_t step : steps) {
    absl::StatusOr<Checkpoint> c = ReadCheckpoint(absl::StrFormat("%s/step-%010d", dir, step));
    EXPECT_TRUE(c.ok()) << c.status();
  }
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_TRUE(absl::StartsWith(e.path().filename().string(), "step-")) << e.path();
  }
  EXPECT_TRUE(Generate().ok()) << "the server serves on";
  TrainJob next;
  ASSERT_TRUE(Submit(Spec(4), &next).ok());
  EXPECT_EQ(WaitFor(next.id(), Ended).state(), tandem::v1::SUCCEEDED) << "and trains on";
}

TEST_F(FaultsE2ETest, AnIoErrorWhileExportingFailsTheJobWithTheReason) {
  StartServer("state-eio");
  TrainJob job = FailAfterFirstCheckpoint("write@/eval/=EIO");
  EXPECT_EQ(job.state(), tandem::v1::FAILED);
  EXPECT_TRUE(absl::StrContains(job.error(), std::strerror(EIO))) << job.error();
  DisarmIoFaults();
  EXPECT_TRUE(Generate().ok());
  EXPECT_FALSE(fs::exists(absl::StrCat(*root_, "/state-eio/jobs/", job.id(), "/models")));
}

TEST_F(FaultsE2ETest, AJobDatabaseThatFailsStopsTheJobWhichResumesIntactAfterARestart) {
  // The reference: the same job, uninterrupted.
  StartServer("state-db-ref");
  TrainJob ref;
  ASSERT_TRUE(Submit(Spec(24), &ref).ok());
  ASSERT_EQ(WaitFor(ref.id(), Ended).state(), tandem::v1::SUCCEEDED);
  ref = Get(ref.id(), true);
  StopServer();

  StartServer("state-db");
  TrainJob job = FailAfterFirstCheckpoint("sqlite.sync@jobs.db=EIO", 24);
  // The step could not be recorded: the job failed, saying why; its end could not be recorded
  // either (the database still fails), so the store still has it RUNNING.
  EXPECT_EQ(job.state(), tandem::v1::FAILED);
  EXPECT_TRUE(absl::StrContains(job.error(), "I/O error")) << job.error();
  EXPECT_TRUE(Generate().ok()) << "inference does not need the job store";
  StopServer();
  DisarmIoFaults();
  // The store never recorded the failure: the restarted server resumes the job from its
  // checkpoint, and the losses are exactly the reference's.
  StartServer("state-db");
  TrainJob done = WaitFor(job.id(), Ended);
  EXPECT_EQ(done.state(), tandem::v1::SUCCEEDED) << done.error();
  EXPECT_EQ(done.attempt(), 2);
  done = Get(job.id(), true);
  ASSERT_EQ(done.history_size(), ref.history_size());
  for (int i = 0; i < ref.history_size(); ++i) {
    EXPECT_EQ(done.history(i).loss(), ref.history(i).loss()) << "step " << i + 1;
  }
}

TEST_F(FaultsE2ETest, ADamagedJobStoreTurnsTrainingOffAndServingGoesOn) {
  fs::create_directories(*root_ + "/state-damaged");
  std::ofstream(*root_ + "/state-damaged/jobs.db") << std::string(8192, 'x');
  StartServer("state-damaged");
  EXPECT_TRUE(Generate().ok());
  tandem::v1::ListTrainJobsResponse list;
  grpc::Status s = training_->List(&list);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "jobs.db")) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "training is disabled")) << s.error_message();
}

TEST_F(FaultsE2ETest, AStateFolderHeldByAnotherServerTurnsTrainingOffThere) {
  StartServer("state-shared");
  auto first = std::move(running_);
  StartServer("state-shared");
  tandem::v1::ListTrainJobsResponse list;
  grpc::Status s = training_->List(&list);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "in use by another tandemd (pid"))
      << s.error_message();
  EXPECT_TRUE(Generate().ok());
}

TEST_F(FaultsE2ETest, ALockedJobStoreFailsTheCallClearlyAndServingGoesOn) {
  StartServer("state-locked");
  // Another process's connection holds the write lock (longer than the store's 10 s wait).
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open((*root_ + "/state-locked/jobs.db").c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
  std::thread serving([&] { EXPECT_TRUE(Generate().ok()); });
  TrainJob job;
  grpc::Status s = Submit(Spec(4), &job);
  serving.join();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "locked")) << s.error_message();
  sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(other);
  ASSERT_TRUE(Submit(Spec(4), &job).ok()) << "the store works once the lock is gone";
  EXPECT_EQ(WaitFor(job.id(), Ended).state(), tandem::v1::SUCCEEDED);
}

// Rewrites the header of `path` (a safetensors file) through `edit`, keeping its data.
void EditSafetensors(const std::string& path, const std::function<void(nlohmann::json&)>& edit) {
  std::string bytes = testing::ReadAll(path);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t{static_cast<unsigned char>(bytes[i])} << (8 * i);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  edit(header);
  const std::string text = header.dump();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  testing::WriteAll(path, out + text + bytes.substr(8 + n));
}

TEST_F(FaultsE2ETest, BrokenModelFoldersAreNotServedAndTheRestIs) {
  const std::string models = *root_ + "/models-broken";
  fs::create_directories(models);
  fs::copy(*root_ + "/models/tiny", models + "/good", fs::copy_options::recursive);
  struct Case {
    std::string name;
    std::function<void(const std::string& weights)> damage;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"truncated", [](const std::string& w) { fs::resize_file(w, fs::file_size(w) / 2); },
       "truncated"},
      {"lying-size",
       [](const std::string& w) {
         EditSafetensors(w, [](nlohmann::json& h) {
           h["tok_embeddings.weight"]["shape"][0] = 7;
         });
       },
       "tok_embeddings.weight"},
      {"lying-dtype",
       [](const std::string& w) {
         EditSafetensors(w, [](nlohmann::json& h) { h["output.weight"]["dtype"] = "Q4"; });
       },
       "output.weight"},
      {"overlapping",
       [](const std::string& w) {
         EditSafetensors(w, [](nlohmann::json& h) {
           std::string first, second;
           for (auto& [k, v] : h.items()) {
             if (k == "__metadata__") continue;
             if (first.empty()) {
               first = k;
             } else if (second.empty()) {
               second = k;
             }
           }
           h[second]["data_offsets"] = h[first]["data_offsets"];
           h[second]["shape"] = h[first]["shape"];
           h[second]["dtype"] = h[first]["dtype"];
         });
       },
       "malformed safetensors"},
      {"wrong-shape",
       [](const std::string& w) {
         // Consistent bytes, the wrong shape for the config: [dim, vocab] instead of [vocab, dim].
         EditSafetensors(w, [](nlohmann::json& h) {
           auto shape = h["tok_embeddings.weight"]["shape"];
           h["tok_embeddings.weight"]["shape"] = {shape[1], shape[0]};
         });
       },
       "tok_embeddings.weight"},
  };
  for (const Case& c : cases) {
    fs::copy(*root_ + "/models/tiny", models + "/" + c.name, fs::copy_options::recursive);
    c.damage(models + "/" + c.name + "/model.safetensors");
  }
  StartServer("", "models-broken");
  EXPECT_TRUE(Generate("good").ok());
  for (const Case& c : cases) {
    grpc::Status s = Generate(c.name);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << c.name;
    EXPECT_TRUE(absl::StrContains(s.error_message(), c.name)) << s.error_message();
    EXPECT_TRUE(absl::StrContains(s.error_message(), c.expected))
        << c.name << ": " << s.error_message();
  }
  grpc::ClientContext ctx;
  tandem::v1::ListModelsResponse list;
  ASSERT_TRUE(inference_->ListModels(&ctx, {}, &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  EXPECT_EQ(list.models(0).name(), "good");
}

}  // namespace
}  // namespace tandem

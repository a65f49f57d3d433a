// Training jobs end to end over a real gRPC channel: an in-process Server with --state_dir and
// --data_dir trains tiny seeded models; the tests drive it through the generated stubs.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"
#include "models/formats/png.h"
#include "server/api/server.h"
#include "tandem/v1/inference.grpc.pb.h"
#include "tandem/v1/training.grpc.pb.h"
#include "tests/testing/test_model.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using tandem::v1::TrainJob;
using tandem::v1::TrainJobEvent;
using tandem::v1::TrainJobSpec;

// 120 fortune-format documents.
void WriteFortunes(const std::string& path) {
  const char* subjects[] = {"The cat", "A dog", "My friend", "The river", "Every star"};
  const char* verbs[] = {"sleeps", "runs", "sings", "waits", "shines"};
  std::ofstream out(path);
  for (int i = 0; i < 120; ++i) {
    out << subjects[i % 5] << " " << verbs[(i / 5) % 5] << " on day " << i % 9 << ".\n";
    if (i % 3 == 0) out << "So it goes.\n";
    out << "%\n";
  }
}

// An image folder (metadata.jsonl beside the PNGs) of 24 grey 16x16 squares: bright ones on a
// dark ground and dark ones on a bright ground, captioned accordingly.
void WriteSquares(const std::string& dir) {
  fs::create_directories(dir);
  std::ofstream meta(dir + "/metadata.jsonl");
  for (int i = 0; i < 24; ++i) {
    const bool bright = i % 2 == 0;
    RawImage im;
    im.width = im.height = 16;
    im.channels = 1;
    im.pixels.assign(16 * 16, bright ? 30 : 220);
    const int x0 = 2 + i % 5, y0 = 2 + (i / 5) % 5, side = 6 + i % 3;
    for (int y = y0; y < y0 + side; ++y) {
      for (int x = x0; x < x0 + side; ++x) im.pixels[y * 16 + x] = bright ? 240 : 15;
    }
    absl::StatusOr<std::string> png = EncodePng(im);
    ASSERT_TRUE(png.ok()) << png.status();
    const std::string name = absl::StrCat("square", i, ".png");
    std::ofstream(dir + "/" + name, std::ios::binary) << *png;
    meta << "{\"file_name\": \"" << name << "\", \"text\": \"a " << (bright ? "bright" : "dark")
         << " square\"}\n";
  }
}

class TrainingE2ETest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(testing::MakeTempDir("tandem-train-e2e"));
    testing::WriteTinyModel(*root_ + "/models/tiny");
    fs::create_directories(*root_ + "/data/texts");
    WriteFortunes(*root_ + "/data/fortunes.txt");
    WriteFortunes(*root_ + "/data/texts/a.txt");
    std::ofstream(*root_ + "/data/empty.txt").close();
    fs::create_directories(*root_ + "/data/nothing");
    WriteSquares(*root_ + "/data/squares");
    // Images without metadata.jsonl or Fashion-MNIST IDX files: no image dataset.
    fs::create_directories(*root_ + "/data/loose-pngs");
    fs::copy_file(*root_ + "/data/squares/square0.png", *root_ + "/data/loose-pngs/square0.png");
    std::ofstream(*root_ + "/outside.txt") << "secret\n%\nsecret\n";
    fs::create_symlink(*root_ + "/outside.txt", *root_ + "/data/escape.txt");
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }

  void StartServer(const std::string& state = "state") {
    ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.metrics_listen = "";
    o.models_dir = *root_ + "/models";
    o.data_dir = *root_ + "/data";
    o.state_dir = *root_ + "/" + state;
    o.devices = {"cpu"};
    o.train_memory_limit_mb = 1024;
    auto server = Server::Create(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    training_ = tandem::v1::Training::NewStub(channel_);
    inference_ = tandem::v1::Inference::NewStub(channel_);
  }
  void StopServer() {
    if (server_) server_->Shutdown(absl::Seconds(5));
    server_.reset();
  }
  void TearDown() override { StopServer(); }

  static TrainJobSpec TextSpec(int64_t steps) {
    TrainJobSpec spec;
    spec.set_name("tiny-fortunes");
    spec.set_kind(tandem::v1::TRAIN_KIND_TEXT);
    spec.set_dataset("fortunes.txt");
    auto* m = spec.mutable_text_model();
    m->set_vocab_size(300);
    m->set_dim(32);
    m->set_layers(2);
    m->set_heads(4);
    m->set_kv_heads(2);
    m->set_seq_len(32);
    auto* h = spec.mutable_hyperparameters();
    h->set_steps(steps);
    h->set_batch_size(4);
    h->set_lr(3e-3);
    h->set_warmup_steps(2);
    h->set_eval_every(10);
    h->set_checkpoint_every(5);
    h->set_seed(11);
    return spec;
  }

  // A tiny text-conditioned U-Net for the squares: two levels (16x16, 8x8), attention at the
  // second, a one-layer text encoder; groups (8) and attention heads (4) divide every width.
  static TrainJobSpec ImageSpec(int64_t steps) {
    TrainJobSpec spec;
    spec.set_name("tiny-squares");
    spec.set_kind(tandem::v1::TRAIN_KIND_IMAGE);
    spec.set_dataset("squares");
    auto* m = spec.mutable_image_model();
    m->set_image_size(16);
    m->set_channels(1);
    m->add_unet_widths(8);
    m->add_unet_widths(16);
    m->set_res_blocks(1);
    m->add_attention_levels(1);
    m->set_text_dim(16);
    m->set_text_layers(1);
    m->set_text_heads(2);
    m->set_text_seq_len(8);
    m->set_vocab_size(300);
    m->set_diffusion_steps(100);
    auto* h = spec.mutable_hyperparameters();
    h->set_steps(steps);
    h->set_batch_size(4);
    h->set_lr(3e-3);
    h->set_warmup_steps(2);
    h->set_eval_every(5);
    h->set_checkpoint_every(5);
    h->set_seed(5);
    return spec;
  }

  grpc::Status Submit(const TrainJobSpec& spec, TrainJob* job) {
    grpc::ClientContext ctx;
    tandem::v1::SubmitTrainJobRequest req;
    *req.mutable_spec() = spec;
    return training_->SubmitTrainJob(&ctx, req, job);
  }
  TrainJob Get(const std::string& id, bool history = false) {
    grpc::ClientContext ctx;
    tandem::v1::GetTrainJobRequest req;
    req.set_id(id);
    req.set_include_history(history);
    TrainJob job;
    grpc::Status s = training_->GetTrainJob(&ctx, req, &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return job;
  }
  // Polls until `pred(job)` or the timeout; returns the last job seen.
  template <typename Pred>
  TrainJob WaitFor(const std::string& id, Pred pred, double seconds = 60) {
    const absl::Time end = absl::Now() + absl::Seconds(seconds);
    TrainJob job;
    while (absl::Now() < end) {
      job = Get(id);
      if (pred(job)) return job;
      absl::SleepFor(absl::Milliseconds(20));
    }
    ADD_FAILURE() << "timed out; job is " << job.ShortDebugString().substr(0, 500);
    return job;
  }
  std::vector<TrainJobEvent> Watch(const std::string& id, grpc::Status* status) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    tandem::v1::WatchTrainJobRequest req;
    req.set_id(id);
    req.set_replay(true);  // a tiny job may end before the Watch attaches
    auto reader = training_->WatchTrainJob(&ctx, req);
    std::vector<TrainJobEvent> events;
    TrainJobEvent e;
    while (reader->Read(&e)) events.push_back(e);
    *status = reader->Finish();
    return events;
  }

  // A spec edited from a valid one, and the status its submission must fail with.
  struct BadSpec {
    const char* what;
    std::function<void(TrainJobSpec*)> edit;
    grpc::StatusCode code;
  };
  // Submits each case (applied to `valid`); each must fail with its code and a message, and no
  // job may be created.
  void ExpectRejected(const TrainJobSpec& valid, const std::vector<BadSpec>& cases) {
    for (const BadSpec& c : cases) {
      TrainJobSpec spec = valid;
      c.edit(&spec);
      TrainJob job;
      grpc::Status s = Submit(spec, &job);
      EXPECT_EQ(s.error_code(), c.code) << c.what << ": " << s.error_message();
      EXPECT_FALSE(s.error_message().empty()) << c.what;
    }
    grpc::ClientContext ctx;
    tandem::v1::ListTrainJobsResponse list;
    ASSERT_TRUE(training_->ListTrainJobs(&ctx, {}, &list).ok());
    EXPECT_EQ(list.jobs_size(), 0);
  }

  static std::string* root_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tandem::v1::Training::Stub> training_;
  std::unique_ptr<tandem::v1::Inference::Stub> inference_;
};

std::string* TrainingE2ETest::root_ = nullptr;

TEST_F(TrainingE2ETest, TextJobTrainsWatchedToTheEndAndDeploysAServableModel) {
  StartServer("state-deploy");
  TrainJobSpec spec = TextSpec(20);
  spec.set_deploy_as("fortune-bot");
  TrainJob job;
  ASSERT_TRUE(Submit(spec, &job).ok());
  EXPECT_EQ(job.id(), "job-000001");
  grpc::Status status;
  std::vector<TrainJobEvent> events = Watch(job.id(), &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(events.front().has_snapshot());
  int evals = 0, metrics = 0;
  int64_t last_step = 0;
  bool running_seen = false;
  for (const auto& e : events) {
    if (e.has_state() && e.state() == tandem::v1::RUNNING) running_seen = true;
    if (e.has_metrics()) {
      // Step metrics are live only (not replayed), at a bounded rate, steps increasing.
      EXPECT_GT(e.metrics().step(), last_step);
      EXPECT_EQ(e.metrics().total_steps(), 20);
      last_step = e.metrics().step();
      ++metrics;
    }
    if (e.has_eval()) {
      ++evals;
      EXPECT_GT(e.eval().bits_per_byte(), 0);
      EXPECT_FALSE(e.eval().text_sample().empty());
    }
  }
  EXPECT_TRUE(running_seen || events.front().snapshot().state() == tandem::v1::RUNNING);
  EXPECT_LE(metrics, 20);
  EXPECT_EQ(evals, 2);  // steps 10 and 20
  ASSERT_TRUE(events.back().has_state());
  EXPECT_EQ(events.back().state(), tandem::v1::SUCCEEDED);

  TrainJob done = Get(job.id(), /*history=*/true);
  EXPECT_EQ(done.state(), tandem::v1::SUCCEEDED);
  EXPECT_EQ(done.latest().step(), 20);
  ASSERT_EQ(done.history_size(), 20);
  EXPECT_LT(done.history(19).loss(), done.history(0).loss());
  EXPECT_EQ(done.deployed_as(), "fortune-bot");
  EXPECT_EQ(done.deployed_step(), 20);
  EXPECT_EQ(done.attempt(), 1);
  // Defaults were filled into the stored spec.
  EXPECT_EQ(done.spec().hyperparameters().grad_accum(), 1);

  grpc::ClientContext lctx;
  tandem::v1::ListModelsResponse models;
  ASSERT_TRUE(inference_->ListModels(&lctx, {}, &models).ok());
  bool found = false;
  for (const auto& m : models.models()) {
    if (m.name() != "fortune-bot") continue;
    found = true;
    EXPECT_EQ(m.train_job_id(), job.id());
    EXPECT_EQ(m.train_step(), 20);
  }
  EXPECT_TRUE(found);
  grpc::ClientContext gctx;
  tandem::v1::GenerateRequest req;
  req.set_model("fortune-bot");
  req.set_prompt("The cat");
  req.mutable_text()->set_max_tokens(8);
  auto reader = inference_->Generate(&gctx, req);
  tandem::v1::GenerateResponse resp;
  bool finished = false;
  while (reader->Read(&resp)) finished |= resp.has_finished();
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_TRUE(finished);

  // The deployment outlives a restart: the trained model is served again from the job's export.
  StopServer();
  StartServer("state-deploy");
  grpc::ClientContext rctx;
  tandem::v1::ListModelsResponse after;
  ASSERT_TRUE(inference_->ListModels(&rctx, {}, &after).ok());
  bool redeployed = false;
  for (const auto& m : after.models()) {
    if (m.name() == "fortune-bot") redeployed = m.train_job_id() == job.id() && m.train_step() == 20;
  }
  EXPECT_TRUE(redeployed);
}

TEST_F(TrainingE2ETest, BadSpecsAreRejectedBeforeAnythingRuns) {
  StartServer("state-bad");
  ExpectRejected(TextSpec(10), {
      {"absolute dataset", [](TrainJobSpec* s) { s->set_dataset("/etc/passwd"); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"dot-dot", [](TrainJobSpec* s) { s->set_dataset("../outside.txt"); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"symlink escape", [](TrainJobSpec* s) { s->set_dataset("escape.txt"); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"missing dataset", [](TrainJobSpec* s) { s->set_dataset("nope.txt"); },
       grpc::StatusCode::NOT_FOUND},
      {"empty dataset", [](TrainJobSpec* s) { s->set_dataset("empty.txt"); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"folder without text", [](TrainJobSpec* s) { s->set_dataset("nothing"); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"no dataset", [](TrainJobSpec* s) { s->clear_dataset(); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"heads not dividing dim", [](TrainJobSpec* s) { s->mutable_text_model()->set_heads(5); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"kv_heads not dividing heads",
       [](TrainJobSpec* s) { s->mutable_text_model()->set_kv_heads(3); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"memory-exhausting size",
       [](TrainJobSpec* s) {
         s->mutable_text_model()->set_dim(8192);
         s->mutable_text_model()->set_layers(48);
         s->mutable_text_model()->set_heads(64);
         s->mutable_text_model()->set_kv_heads(64);
       },
       grpc::StatusCode::RESOURCE_EXHAUSTED},
      {"no steps", [](TrainJobSpec* s) { s->mutable_hyperparameters()->set_steps(0); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"negative lr", [](TrainJobSpec* s) { s->mutable_hyperparameters()->set_lr(-1); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"dropout of 1", [](TrainJobSpec* s) { s->mutable_hyperparameters()->set_dropout(1); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"an unknown optimizer",
       [](TrainJobSpec* s) { s->mutable_hyperparameters()->set_optimizer("sgd"); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"an unknown precision",
       [](TrainJobSpec* s) { s->mutable_hyperparameters()->set_precision("fp16"); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"no kind", [](TrainJobSpec* s) { s->set_kind(tandem::v1::TRAIN_KIND_UNSPECIFIED); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"unknown init_from",
       [](TrainJobSpec* s) {
         s->clear_text_model();
         s->set_init_from("no-such-model");
       },
       grpc::StatusCode::NOT_FOUND},
      {"image job on a text file",
       [](TrainJobSpec* s) {
         s->clear_text_model();
         s->set_kind(tandem::v1::TRAIN_KIND_IMAGE);
       },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"bad deploy name", [](TrainJobSpec* s) { s->set_deploy_as("a/b"); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"NUL in the dataset", [](TrainJobSpec* s) { s->set_dataset(std::string("fortunes.txt\0x", 14)); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"over-long dataset", [](TrainJobSpec* s) { s->set_dataset(std::string(2000, 'a')); },
       grpc::StatusCode::INVALID_ARGUMENT},
      // The fortunes have more distinct characters than 260 - 259 pieces leave room for: caught
      // at submission, not by the tokenizer trainer minutes later.
      {"vocab_size too small for the data",
       [](TrainJobSpec* s) { s->mutable_text_model()->set_vocab_size(260); },
       grpc::StatusCode::INVALID_ARGUMENT},
  });
  {
    TrainJobSpec small = TextSpec(10);
    small.mutable_text_model()->set_vocab_size(260);
    TrainJob job;
    grpc::Status s = Submit(small, &job);
    EXPECT_NE(s.error_message().find("use a vocab_size of at least"), std::string::npos)
        << s.error_message();
  }
  // A folder of .txt files is a valid dataset.
  TrainJobSpec spec = TextSpec(4);
  spec.set_dataset("texts");
  TrainJob job;
  grpc::Status folder = Submit(spec, &job);
  ASSERT_TRUE(folder.ok()) << folder.error_message();
  WaitFor(job.id(), [](const TrainJob& j) { return j.state() == tandem::v1::SUCCEEDED; });
}

TEST_F(TrainingE2ETest, ImageJobTrainsWatchedToTheEndAndDeploysAServableModel) {
  StartServer("state-image");
  TrainJobSpec spec = ImageSpec(10);
  spec.set_deploy_as("squares");
  TrainJob job;
  grpc::Status submitted = Submit(spec, &job);
  ASSERT_TRUE(submitted.ok()) << submitted.error_message();
  grpc::Status status;
  std::vector<TrainJobEvent> events = Watch(job.id(), &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(events.front().has_snapshot());
  // The job takes far longer to start (tokenizer, weights) than Watch to attach.
  ASSERT_NE(events.front().snapshot().state(), tandem::v1::SUCCEEDED)
      << "the job ended before Watch attached";
  std::vector<int64_t> eval_steps;
  int metrics = 0;
  std::string logs;
  for (const auto& e : events) {
    if (e.has_log()) absl::StrAppend(&logs, "\n  ", e.log());
    if (e.has_metrics()) {
      ++metrics;
      EXPECT_GT(e.metrics().images_per_second(), 0);
      EXPECT_EQ(e.metrics().tokens_per_second(), 0);
    }
    if (!e.has_eval()) continue;
    eval_steps.push_back(e.eval().step());
    EXPECT_GT(e.eval().loss(), 0);
    EXPECT_EQ(e.eval().bits_per_byte(), 0);  // text jobs only
    EXPECT_TRUE(e.eval().text_sample().empty());
    // A grid of samples for the held-out captions (images 9 and 19: two 16x16 tiles).
    absl::StatusOr<RawImage> grid = DecodePng(e.eval().image_sample_png());
    ASSERT_TRUE(grid.ok()) << "eval at step " << e.eval().step() << ": " << grid.status();
    EXPECT_EQ(grid->width, 32);
    EXPECT_EQ(grid->height, 16);
    EXPECT_EQ(grid->channels, 1);
  }
  EXPECT_LE(metrics, 10);  // live only (not replayed), at a bounded rate
  EXPECT_EQ(eval_steps, (std::vector<int64_t>{5, 10})) << logs;
  ASSERT_TRUE(events.back().has_state());
  EXPECT_EQ(events.back().state(), tandem::v1::SUCCEEDED) << logs;

  TrainJob done = Get(job.id(), /*history=*/true);
  EXPECT_EQ(done.state(), tandem::v1::SUCCEEDED) << done.error();
  EXPECT_EQ(done.latest().step(), 10);
  ASSERT_EQ(done.history_size(), 10);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(done.history(i).step(), i + 1);
    EXPECT_GT(done.history(i).loss(), 0);
    EXPECT_EQ(done.history(i).total_steps(), 10);
  }
  EXPECT_EQ(done.checkpoint_step(), 10);
  EXPECT_EQ(done.deployed_as(), "squares");
  EXPECT_EQ(done.deployed_step(), 10);
  EXPECT_FALSE(done.best_eval().image_sample_png().empty());
  // The effective config was written back into the stored spec.
  EXPECT_EQ(done.spec().image_model().unet_widths_size(), 2);
  EXPECT_EQ(done.spec().image_model().diffusion_steps(), 100);

  grpc::ClientContext lctx;
  tandem::v1::ListModelsResponse models;
  ASSERT_TRUE(inference_->ListModels(&lctx, {}, &models).ok());
  bool found = false;
  for (const auto& m : models.models()) {
    if (m.name() != "squares") continue;
    found = true;
    EXPECT_EQ(m.train_job_id(), job.id());
    EXPECT_EQ(m.train_step(), 10);
  }
  EXPECT_TRUE(found);

  // The deployed model serves images over the Inference API.
  grpc::ClientContext gctx;
  gctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  tandem::v1::GenerateRequest req;
  req.set_model("squares");
  req.set_prompt("a bright square");
  req.mutable_image()->set_steps(4);
  req.mutable_image()->set_seed(9);
  req.mutable_image()->set_guidance_scale(2.0f);
  auto reader = inference_->Generate(&gctx, req);
  tandem::v1::GenerateResponse resp;
  std::vector<tandem::v1::Image> images;
  bool finished = false;
  while (reader->Read(&resp)) {
    if (resp.has_image()) images.push_back(resp.image());
    if (resp.has_finished()) finished = true;
  }
  grpc::Status generated = reader->Finish();
  ASSERT_TRUE(generated.ok()) << generated.error_message();
  EXPECT_TRUE(finished);
  ASSERT_EQ(images.size(), 1u);
  EXPECT_EQ(images[0].width(), 16);
  EXPECT_EQ(images[0].height(), 16);
  EXPECT_EQ(images[0].seed(), 9u);
  absl::StatusOr<RawImage> image = DecodePng(images[0].png());
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->width, 16);
  EXPECT_EQ(image->height, 16);
  EXPECT_EQ(image->channels, 1);
}

TEST_F(TrainingE2ETest, BadImageSpecsAreRejectedBeforeAnythingRuns) {
  StartServer("state-image-bad");
  ExpectRejected(ImageSpec(4), {
      {"folder without metadata.jsonl or IDX files",
       [](TrainJobSpec* s) { s->set_dataset("loose-pngs"); }, grpc::StatusCode::INVALID_ARGUMENT},
      {"missing dataset", [](TrainJobSpec* s) { s->set_dataset("no-such-images"); },
       grpc::StatusCode::NOT_FOUND},
      {"groups not dividing a width",
       [](TrainJobSpec* s) { s->mutable_image_model()->set_unet_widths(0, 12); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"attention level out of range",
       [](TrainJobSpec* s) { s->mutable_image_model()->set_attention_levels(0, 2); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"two channels", [](TrainJobSpec* s) { s->mutable_image_model()->set_channels(2); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"text_model on an image job",
       [](TrainJobSpec* s) { s->mutable_text_model()->set_dim(32); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"dropout on an image job",
       [](TrainJobSpec* s) { s->mutable_hyperparameters()->set_dropout(0.1); },
       grpc::StatusCode::INVALID_ARGUMENT},
      {"bf16-mixed on an image job",
       [](TrainJobSpec* s) { s->mutable_hyperparameters()->set_precision("bf16-mixed"); },
       grpc::StatusCode::INVALID_ARGUMENT},
  });
  // Images of another size than the model's pass the spec checks but fail the job when its
  // trainer loads them, with a message saying why.
  TrainJobSpec spec = ImageSpec(4);
  spec.mutable_image_model()->set_image_size(8);
  TrainJob job;
  ASSERT_TRUE(Submit(spec, &job).ok());
  TrainJob failed =
      WaitFor(job.id(), [](const TrainJob& j) { return j.state() == tandem::v1::FAILED; });
  EXPECT_NE(failed.error().find("16x16"), std::string::npos) << failed.error();
}

TEST_F(TrainingE2ETest, PauseCheckpointsResumeContinuesAndCancelEnds) {
  StartServer("state-pause");
  TrainJob job;
  ASSERT_TRUE(Submit(TextSpec(100000), &job).ok());
  const std::string id = job.id();
  WaitFor(id, [](const TrainJob& j) { return j.latest().step() >= 3; });
  grpc::ClientContext pctx;
  tandem::v1::PauseTrainJobRequest preq;
  preq.set_id(id);
  ASSERT_TRUE(training_->PauseTrainJob(&pctx, preq, &job).ok());
  TrainJob paused = WaitFor(id, [](const TrainJob& j) { return j.state() == tandem::v1::PAUSED; });
  EXPECT_GE(paused.checkpoint_step(), 3);
  EXPECT_EQ(paused.checkpoint_step(), paused.latest().step());
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(Get(id).latest().step(), paused.latest().step());  // nothing runs while paused

  grpc::ClientContext rctx;
  tandem::v1::ResumeTrainJobRequest rreq;
  rreq.set_id(id);
  ASSERT_TRUE(training_->ResumeTrainJob(&rctx, rreq, &job).ok());
  TrainJob resumed = WaitFor(id, [&](const TrainJob& j) {
    return j.state() == tandem::v1::RUNNING && j.latest().step() > paused.latest().step();
  });
  EXPECT_EQ(resumed.attempt(), 2);

  grpc::ClientContext cctx;
  tandem::v1::CancelTrainJobRequest creq;
  creq.set_id(id);
  ASSERT_TRUE(training_->CancelTrainJob(&cctx, creq, &job).ok());
  WaitFor(id, [](const TrainJob& j) { return j.state() == tandem::v1::CANCELLED; });
  grpc::ClientContext c2;
  grpc::Status again = training_->CancelTrainJob(&c2, creq, &job);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << again.error_message();
  grpc::ClientContext gctx;
  tandem::v1::GetTrainJobRequest greq;
  greq.set_id("job-999999");
  EXPECT_EQ(training_->GetTrainJob(&gctx, greq, &job).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(TrainingE2ETest, QueuedJobsStartByPriorityThenSubmissionOrder) {
  StartServer("state-queue");
  TrainJob first, low, high;
  ASSERT_TRUE(Submit(TextSpec(100000), &first).ok());
  WaitFor(first.id(), [](const TrainJob& j) { return j.state() == tandem::v1::RUNNING; });
  TrainJobSpec spec = TextSpec(3);
  ASSERT_TRUE(Submit(spec, &low).ok());
  spec.set_priority(5);
  ASSERT_TRUE(Submit(spec, &high).ok());
  EXPECT_EQ(Get(low.id()).state(), tandem::v1::QUEUED);
  EXPECT_EQ(Get(high.id()).state(), tandem::v1::QUEUED);
  grpc::ClientContext ctx;
  tandem::v1::CancelTrainJobRequest req;
  req.set_id(first.id());
  ASSERT_TRUE(training_->CancelTrainJob(&ctx, req, &first).ok());
  TrainJob h = WaitFor(high.id(), [](const TrainJob& j) { return j.state() == tandem::v1::SUCCEEDED; });
  TrainJob l = WaitFor(low.id(), [](const TrainJob& j) { return j.state() == tandem::v1::SUCCEEDED; });
  EXPECT_LT(google::protobuf::util::TimeUtil::TimestampToNanoseconds(h.started()),
            google::protobuf::util::TimeUtil::TimestampToNanoseconds(l.started()));
  grpc::ClientContext lctx;
  tandem::v1::ListTrainJobsRequest lreq;
  lreq.add_states(tandem::v1::SUCCEEDED);
  tandem::v1::ListTrainJobsResponse list;
  ASSERT_TRUE(training_->ListTrainJobs(&lctx, lreq, &list).ok());
  EXPECT_EQ(list.jobs_size(), 2);
}

TEST_F(TrainingE2ETest, DeployingWhileStreamsRunFailsNoRequest) {
  StartServer("state-swap");
  // Fine-tune the served model and hot-swap it at every improving evaluation while clients
  // stream from it.
  TrainJobSpec spec = TextSpec(16);
  spec.clear_text_model();
  spec.set_init_from("tiny");
  spec.set_deploy_as("tiny");
  spec.set_deploy_on_improvement(true);
  spec.mutable_hyperparameters()->set_eval_every(2);
  std::atomic<bool> done{false};
  std::atomic<int> failures{0}, streams{0};
  std::mutex mu;
  std::set<int64_t> versions;
  auto client = [&] {
    while (!done.load()) {
      grpc::ClientContext ctx;
      tandem::v1::GenerateRequest req;
      req.set_model("tiny");
      req.set_prompt("the cat sat");
      req.mutable_text()->set_max_tokens(40);
      auto reader = inference_->Generate(&ctx, req);
      tandem::v1::GenerateResponse resp;
      int64_t version = 0;
      while (reader->Read(&resp)) {
        if (resp.has_finished()) version = resp.finished().model_version();
      }
      grpc::Status s = reader->Finish();
      if (!s.ok()) {
        ++failures;
        ADD_FAILURE() << s.error_message();
      }
      ++streams;
      std::lock_guard<std::mutex> lock(mu);
      versions.insert(version);
    }
  };
  std::thread a(client), b(client);
  TrainJob job;
  ASSERT_TRUE(Submit(spec, &job).ok());
  TrainJob finished =
      WaitFor(job.id(), [](const TrainJob& j) { return j.state() == tandem::v1::SUCCEEDED; });
  absl::SleepFor(absl::Milliseconds(200));
  done = true;
  a.join();
  b.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(streams.load(), 2);
  EXPECT_EQ(finished.deployed_as(), "tiny");
  EXPECT_GE(versions.size(), 2u) << "streams saw only one version";
  EXPECT_GT(*versions.rbegin(), 1);
}

// A job and streaming requests on the same device: both make progress, and the job's losses are
// bit for bit those of the same job trained with the device to itself.
TEST_F(TrainingE2ETest, TrainingAndStreamsBothProgressWithTheLossesOfTrainingAlone) {
  StartServer("state-colocated");
  TrainJobSpec spec = TextSpec(24);
  spec.mutable_hyperparameters()->set_chunk_rows(2);
  TrainJob alone;
  ASSERT_TRUE(Submit(spec, &alone).ok());
  alone = WaitFor(alone.id(), [](const TrainJob& j) { return j.state() == tandem::v1::SUCCEEDED; });
  const TrainJob alone_done = Get(alone.id(), /*history=*/true);
  ASSERT_EQ(alone_done.history_size(), 24);

  TrainJob busy;
  ASSERT_TRUE(Submit(spec, &busy).ok());
  WaitFor(busy.id(), [](const TrainJob& j) { return j.state() == tandem::v1::RUNNING; });
  std::atomic<bool> job_done{false};
  std::atomic<int> streams_ok{0}, streams_failed{0}, streams_during_training{0};
  auto client = [&] {
    while (!job_done) {
      const bool running_before = Get(busy.id()).state() == tandem::v1::RUNNING;
      grpc::ClientContext ctx;
      tandem::v1::GenerateRequest req;
      req.set_model("tiny");
      req.set_prompt("The cat");
      req.mutable_text()->set_max_tokens(12);
      auto reader = inference_->Generate(&ctx, req);
      tandem::v1::GenerateResponse resp;
      while (reader->Read(&resp)) {
      }
      if (reader->Finish().ok()) {
        ++streams_ok;
        if (running_before && Get(busy.id()).state() == tandem::v1::RUNNING) {
          ++streams_during_training;
        }
      } else {
        ++streams_failed;
      }
    }
  };
  std::thread a(client), b(client);
  const TrainJob busy_done_state =
      WaitFor(busy.id(), [](const TrainJob& j) { return j.state() == tandem::v1::SUCCEEDED; });
  job_done = true;
  a.join();
  b.join();
  EXPECT_EQ(busy_done_state.state(), tandem::v1::SUCCEEDED);
  EXPECT_EQ(streams_failed, 0);
  EXPECT_GT(streams_during_training, 0) << "no stream completed while the job trained";
  const TrainJob busy_done = Get(busy.id(), /*history=*/true);
  ASSERT_EQ(busy_done.history_size(), 24);
  for (int i = 0; i < 24; ++i) {
    EXPECT_EQ(busy_done.history(i).loss(), alone_done.history(i).loss()) << "step " << i + 1;
  }
  EXPECT_EQ(busy_done.best_eval().loss(), alone_done.best_eval().loss());
}

// A time-budgeted job: steps planned from the measured rate and stored, the schedule ending at
// the budget, the final evaluation and deployment all the same.
TEST_F(TrainingE2ETest, TimeBudgetedJobPlansItsStepsAndFinishesWithAnEvaluation) {
  StartServer("state-budget");
  TrainJobSpec spec = TextSpec(0);
  spec.mutable_hyperparameters()->set_max_seconds(6);
  spec.mutable_hyperparameters()->set_eval_every(0);
  spec.mutable_hyperparameters()->set_checkpoint_every(0);
  spec.mutable_hyperparameters()->set_precision("auto");  // as the demo's text recipe
  spec.set_deploy_as("budgeted");
  TrainJob job;
  ASSERT_TRUE(Submit(spec, &job).ok());
  EXPECT_EQ(job.spec().hyperparameters().steps(), 100000000);  // not planned yet
  const TrainJob done = WaitFor(
      job.id(), [](const TrainJob& j) { return j.state() == tandem::v1::SUCCEEDED; }, 120);
  const int64_t planned = done.spec().hyperparameters().steps();
  EXPECT_LT(planned, 100000000);
  EXPECT_GT(planned, 5);
  EXPECT_EQ(done.latest().step(), done.latest().total_steps());
  EXPECT_LE(done.latest().step(), planned);
  EXPECT_EQ(done.best_eval().step(), done.latest().step());  // the final evaluation
  EXPECT_EQ(done.deployed_as(), "budgeted");
  // The learning rate of the last step is the schedule's floor.
  const TrainJob full = Get(job.id(), /*history=*/true);
  ASSERT_GT(full.history_size(), 0);
  if (done.latest().step() == planned) {
    EXPECT_NEAR(full.history(full.history_size() - 1).lr(),
                done.spec().hyperparameters().min_lr(), 1e-9);
  }
  EXPECT_EQ(done.spec().hyperparameters().precision(), "auto");  // resolved per run, not stored
  grpc::Status status;
  bool planned_logged = false;
  std::string started;
  for (const auto& e : Watch(job.id(), &status)) {
    if (e.has_log() && e.log().find("time budget") != std::string::npos) planned_logged = true;
    if (e.has_log() && e.log().rfind("started", 0) == 0) started = e.log();
  }
  EXPECT_TRUE(planned_logged);
  // The start names the precision "auto" resolved to on this machine.
  EXPECT_TRUE(started.find(", bf16-mixed)") != std::string::npos ||
              started.find(", fp32)") != std::string::npos)
      << started;
}

TEST_F(TrainingE2ETest, RestartResumesFromTheCheckpointWithTheSameLosses) {
  // Uninterrupted reference run.
  StartServer("state-ref");
  TrainJob ref;
  ASSERT_TRUE(Submit(TextSpec(40), &ref).ok());
  ref = WaitFor(ref.id(), [](const TrainJob& j) { return j.state() == tandem::v1::SUCCEEDED; });
  TrainJob ref_full = Get(ref.id(), true);
  StopServer();

  // The same job, with the server stopped mid-way and started again on the same state.
  StartServer("state-restart");
  TrainJob job;
  ASSERT_TRUE(Submit(TextSpec(40), &job).ok());
  WaitFor(job.id(), [](const TrainJob& j) { return j.latest().step() >= 7; });
  StopServer();
  StartServer("state-restart");
  TrainJob done = WaitFor(job.id(), [](const TrainJob& j) {
    return j.state() == tandem::v1::SUCCEEDED;
  });
  EXPECT_EQ(done.attempt(), 2);
  TrainJob full = Get(job.id(), true);
  ASSERT_EQ(full.history_size(), 40);
  ASSERT_EQ(ref_full.history_size(), 40);
  for (int i = 0; i < 40; ++i) {
    EXPECT_EQ(full.history(i).loss(), ref_full.history(i).loss()) << "step " << i + 1;
  }
}

}  // namespace
}  // namespace tandem

// The device loop's scheduling with fake workloads' models: inference preempts training at the
// next unit, training's minimum share under saturation, priorities, per-model queue caps,
// chunked prefill. Orders and counts are asserted, never latencies (those are the benchmark's).
#include "server/core/device_loop.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "models/torch/yield_point.h"
#include "server/core/worker_pool.h"
#include "server/metrics/metrics.h"
#include "tests/testing/test_model.h"

namespace tandem {
namespace {

// What ran on the device, in order.
class EventLog {
 public:
  void Add(std::string what) {
    absl::MutexLock lock(&mu_);
    events_.push_back(std::move(what));
  }
  std::vector<std::string> events() {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  int Count(const std::string& what) {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(std::count(events_.begin(), events_.end(), what));
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> events_ ABSL_GUARDED_BY(mu_);
};

// Busy work of `d` (not a sleep: the device is occupied, as a real kernel would occupy it).
void Spin(absl::Duration d) {
  const absl::Time end = absl::Now() + d;
  while (absl::Now() < end) {
  }
}

// An image model whose denoising step takes `step` of busy work and is logged.
class FakeImageModel final : public ImageModel {
 public:
  FakeImageModel(EventLog* log, absl::Duration step, int slots)
      : log_(log), step_(step), free_(slots) {
    config_.image_size = 2;
    config_.channels = 1;
  }
  const DiffusionConfig& config() const override { return config_; }
  const std::string& device() const override { return device_; }
  int free_samples() const override { return free_; }
  int64_t parameter_count() const override { return 0; }
  absl::StatusOr<int> StartSample(const ImageSampleSpec& spec) override {
    if (free_ == 0) return absl::ResourceExhaustedError("full");
    --free_;
    const int id = next_++;
    total_[id] = spec.steps;
    done_[id] = 0;
    seed_[id] = spec.seed;
    log_->Add("image start " + std::to_string(spec.seed));
    return id;
  }
  absl::Status Step(absl::Span<const int> samples) override {
    log_->Add("image step");
    Spin(step_);
    for (int s : samples) ++done_[s];
    return absl::OkStatus();
  }
  int StepsDone(int sample) const override { return done_.at(sample); }
  int TotalSteps(int sample) const override { return total_.at(sample); }
  absl::Status Pixels(int, std::vector<uint8_t>* pixels) override {
    pixels->assign(4, 0);
    return absl::OkStatus();
  }
  void ReleaseSample(int sample) override {
    ++free_;
    total_.erase(sample);
    done_.erase(sample);
  }

 private:
  EventLog* log_;
  const absl::Duration step_;
  DiffusionConfig config_;
  std::string device_ = "cpu";
  int free_;
  int next_ = 0;
  std::map<int, int> total_, done_;
  std::map<int, uint64_t> seed_;
};

// A trainer whose chunks take `chunk` of busy work and are logged; every `chunks_per_step`-th
// chunk completes a step. No evaluations, checkpoints or snapshots unless asked. With
// set_slices(n) a chunk is n logged slices with a yield point between each two, as a real net
// has one at every layer boundary.
class FakeTrainer final : public Trainer {
 public:
  FakeTrainer(EventLog* log, absl::Duration chunk, int64_t steps, int chunks_per_step = 2)
      : log_(log), chunk_(chunk), per_step_(chunks_per_step) {
    options_.hyper.steps = steps;
    options_.hyper.eval_every = 0;
    options_.hyper.checkpoint_every = 0;
    options_.hyper.batch_size = chunks_per_step;
  }
  int64_t step() const override { return step_; }
  int64_t total_steps() const override { return options_.hyper.steps; }
  const TrainOptions& options() const override { return options_; }
  bool at_step_boundary() const override { return in_step_ == 0; }
  bool at_micro_boundary() const override { return in_step_ == 0; }
  int chunk_rows() const override { return 1; }
  absl::StatusOr<double> ProbeChunk(int) override { return absl::ToDoubleSeconds(chunk_); }
  void SetChunkRows(int) override {}
  void SetTotalSteps(int64_t steps) override { options_.hyper.steps = steps; }
  void set_slices(int n) { slices_ = n; }
  absl::StatusOr<std::optional<StepMetrics>> RunChunk() override {
    log_->Add("chunk start");
    for (int i = 0; i < slices_; ++i) {
      if (i > 0) TrainYieldPoint();
      Spin(chunk_ / slices_);
      if (slices_ > 1) log_->Add("slice");
    }
    log_->Add("chunk end");
    if (++in_step_ < per_step_) return std::optional<StepMetrics>();
    in_step_ = 0;
    StepMetrics m;
    m.step = ++step_;
    return std::optional<StepMetrics>(m);
  }
  void StartEvaluation() override {}
  absl::StatusOr<std::optional<EvalMetrics>> RunEvalChunk() override {
    return std::optional<EvalMetrics>(EvalMetrics{});
  }
  absl::StatusOr<TrainSnapshot> Snapshot() override { return TrainSnapshot{}; }
  int64_t parameter_count() const override { return 0; }

 private:
  EventLog* log_;
  const absl::Duration chunk_;
  const int per_step_;
  TrainOptions options_;
  int64_t step_ = 0;
  int in_step_ = 0;
  int slices_ = 1;
};

class Listener final : public TrainListener {
 public:
  int Backlog() const override { return 0; }
  void OnCalibrated(int, double) override {}
  void OnStep(const StepMetrics&) override { ++steps; }
  void OnEvaluated(const EvalMetrics&) override {}
  void OnSnapshot(TrainSnapshot, const SnapshotReasons&) override {}
  void OnEnded(TrainEnd e, const absl::Status&) override {
    end = e;
    ended.Notify();
  }
  std::atomic<int> steps{0};
  TrainEnd end = TrainEnd::kFailed;
  absl::Notification ended;
};

// The stream of a request: its end, and whether it ended OK.
class Stream final : public ResponseStream {
 public:
  void Send(GenerateEvent) override {}
  void Finish(const absl::Status& status) override {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    status_ = status;
    done_.Notify();
  }
  bool cancelled() const override { return false; }
  absl::Status Wait() {
    done_.WaitForNotification();
    absl::MutexLock lock(&mu_);
    return status_;
  }

 private:
  absl::Mutex mu_;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  absl::Notification done_;
};

std::shared_ptr<ModelEntry> ImageEntry(std::shared_ptr<ImageModel> model) {
  auto e = std::make_shared<ModelEntry>();
  e->name = "fake";
  e->version = 1;
  e->dir.kind = ModelKind::kImage;
  e->image = {std::move(model)};
  return e;
}

std::unique_ptr<ImageRequest> Image(std::shared_ptr<const ModelEntry> entry, int steps,
                                    uint64_t seed, int priority,
                                    std::shared_ptr<Stream> stream) {
  auto r = std::make_unique<ImageRequest>();
  r->model = std::move(entry);
  r->spec.steps = steps;
  r->spec.seed = seed;
  r->priority = priority;
  r->accepted = absl::Now();
  r->stream = std::move(stream);
  return r;
}

std::unique_ptr<DeviceLoop> Loop(double min_share, TrainExecution exec) {
  DeviceLoopOptions o;
  o.scheduler.train_min_share = min_share;
  o.train_execution = exec;
  absl::StatusOr<std::unique_ptr<DeviceLoop>> loop = DeviceLoop::Create(o, nullptr, nullptr);
  EXPECT_TRUE(loop.ok()) << loop.status();
  return loop.ok() ? *std::move(loop) : nullptr;
}

// Waits (up to 30 s) for `pred`.
template <typename Pred>
bool Eventually(Pred pred) {
  for (int i = 0; i < 30000 && !pred(); ++i) absl::SleepFor(absl::Milliseconds(1));
  return pred();
}

// Serves one image request of `steps` steps beside the running job-1, checks that training goes
// on afterwards (another `progress` event is logged), cancels the job, and returns what the
// device logged from the request's first step to its last.
std::vector<std::string> EventsDuringOneRequest(DeviceLoop* loop, EventLog* log,
                                                Listener* listener, int steps,
                                                const std::string& progress) {
  auto model = std::make_shared<FakeImageModel>(log, absl::Milliseconds(2), 4);
  auto stream = std::make_shared<Stream>();
  loop->Submit(Image(ImageEntry(model), steps, /*seed=*/1, 0, stream));
  EXPECT_TRUE(stream->Wait().ok());
  const int then = log->Count(progress);
  EXPECT_TRUE(Eventually([&] { return log->Count(progress) > then; }));
  loop->ControlTraining("job-1", TrainWorkload::Control::kCancel);
  listener->ended.WaitForNotification();
  EXPECT_EQ(listener->end, TrainEnd::kCancelled);
  const std::vector<std::string> events = log->events();
  auto first = std::find(events.begin(), events.end(), "image step");
  auto last = std::find(events.rbegin(), events.rend(), "image step").base();
  if (first == events.end()) return {};
  return std::vector<std::string>(first, last);
}

class PreemptionTest : public ::testing::TestWithParam<TrainExecution> {};

// A request that arrives while a job trains runs all its steps before the next chunk starts;
// with a background executor the chunk in flight at its arrival goes on beside it.
TEST_P(PreemptionTest, InferencePreemptsTrainingAtTheNextChunk) {
  EventLog log;
  std::unique_ptr<DeviceLoop> loop = Loop(/*min_share=*/0, GetParam());
  ASSERT_NE(loop, nullptr);
  Listener listener;
  loop->StartTraining({"job-1", std::make_unique<FakeTrainer>(&log, absl::Milliseconds(20), 1000),
                       &listener});
  ASSERT_TRUE(Eventually([&] { return log.Count("chunk end") >= 3; }));
  // Training goes on once the request is done; between the request's first and last step, no
  // chunk started.
  const std::vector<std::string> during =
      EventsDuringOneRequest(loop.get(), &log, &listener, /*steps=*/6, "chunk start");
  EXPECT_EQ(std::count(during.begin(), during.end(), std::string("image step")), 6);
  EXPECT_EQ(std::count(during.begin(), during.end(), std::string("chunk start")), 0);
}

INSTANTIATE_TEST_SUITE_P(Executions, PreemptionTest,
                         ::testing::Values(TrainExecution::kBackground, TrainExecution::kInline),
                         [](const auto& info) {
                           return info.param == TrainExecution::kBackground ? "Background"
                                                                            : "Inline";
                         });

// The preemption latency counts the work that waited for training: a request arriving while
// the loop had only training to run, not one arriving while the loop ran another request (that
// one waited for inference).
TEST_P(PreemptionTest, PreemptionLatencyCountsOnlyWorkThatFoundTrainingHoldingTheDevice) {
  EventLog log;
  Metrics metrics;
  DeviceLoopOptions o;
  o.scheduler.train_min_share = 0;
  o.train_execution = GetParam();
  absl::StatusOr<std::unique_ptr<DeviceLoop>> loop = DeviceLoop::Create(o, nullptr, &metrics);
  ASSERT_TRUE(loop.ok()) << loop.status();
  Listener listener;
  (*loop)->StartTraining(
      {"job-1", std::make_unique<FakeTrainer>(&log, absl::Milliseconds(100), 1000), &listener});
  ASSERT_TRUE(Eventually([&] { return log.Count("chunk end") >= 2; }));
  // (In the background, the chunk in flight when the first request arrives is still running
  // when the second one does: only the loop's state tells them apart.)
  auto model = std::make_shared<FakeImageModel>(&log, absl::Milliseconds(2), 4);
  auto entry = ImageEntry(model);
  auto first = std::make_shared<Stream>(), second = std::make_shared<Stream>();
  (*loop)->Submit(Image(entry, /*steps=*/60, /*seed=*/1, 0, first));
  ASSERT_TRUE(Eventually([&] { return log.Count("image step") >= 5; }));
  (*loop)->Submit(Image(entry, /*steps=*/5, /*seed=*/2, 0, second));
  ASSERT_TRUE(first->Wait().ok());
  ASSERT_TRUE(second->Wait().ok());
  (*loop)->ControlTraining("job-1", TrainWorkload::Control::kCancel);
  listener.ended.WaitForNotification();
  prometheus::Histogram& preemption = metrics.preemption_seconds.Add(
      {{"device", "cpu"}}, Metrics::PreemptionBuckets());
  EXPECT_EQ(preemption.Collect().histogram.sample_count, 1u);
}

// A chunk in flight on the background executor when a request arrives stops at its next yield
// point and goes on when the request is done: beside the request's steps ran at most the slice
// the chunk was in (without the gate, the chunk's slices would run on the other core throughout).
TEST(DeviceLoopTest, AChunkInFlightWaitsAtItsNextYieldPointWhileInferenceRuns) {
  EventLog log;
  std::unique_ptr<DeviceLoop> loop = Loop(/*min_share=*/0, TrainExecution::kBackground);
  ASSERT_NE(loop, nullptr);
  Listener listener;
  auto trainer = std::make_unique<FakeTrainer>(&log, absl::Milliseconds(400), 1000);
  trainer->set_slices(40);  // a yield point every 10 ms
  loop->StartTraining({"job-1", std::move(trainer), &listener});
  ASSERT_TRUE(Eventually([&] { return log.Count("slice") >= 3; }));
  const std::vector<std::string> during =
      EventsDuringOneRequest(loop.get(), &log, &listener, /*steps=*/30, "slice");
  EXPECT_EQ(std::count(during.begin(), during.end(), std::string("image step")), 30);
  EXPECT_LE(std::count(during.begin(), during.end(), std::string("slice")), 1);
  EXPECT_EQ(std::count(during.begin(), during.end(), std::string("chunk start")), 0);
}

// Inference that never lets up: with a minimum share training still completes chunks; without
// one it waits for the device to go quiet.
TEST(DeviceLoopTest, TrainingGetsItsMinimumShareUnderSaturation) {
  for (double share : {0.0, 0.3}) {
    SCOPED_TRACE(share);
    EventLog log;
    std::unique_ptr<DeviceLoop> loop = Loop(share, TrainExecution::kBackground);
    ASSERT_NE(loop, nullptr);
    auto model = std::make_shared<FakeImageModel>(&log, absl::Milliseconds(3), 64);
    auto entry = ImageEntry(model);
    // Saturate first (requests queued and running), then start the job.
    std::vector<std::shared_ptr<Stream>> streams;
    for (int i = 0; i < 8; ++i) {
      streams.push_back(std::make_shared<Stream>());
      loop->Submit(Image(entry, /*steps=*/150, i, 0, streams.back()));
    }
    ASSERT_TRUE(Eventually([&] { return log.Count("image step") >= 5; }));
    Listener listener;
    loop->StartTraining(
        {"job-1", std::make_unique<FakeTrainer>(&log, absl::Milliseconds(10), 1000), &listener});
    // The images take ~0.5 s of steps; count the chunks done before their last step.
    for (auto& s : streams) ASSERT_TRUE(s->Wait().ok());
    const std::vector<std::string> events = log.events();
    auto last = std::find(events.rbegin(), events.rend(), "image step").base();
    const int chunks = static_cast<int>(std::count(events.begin(), last, std::string("chunk end")));
    if (share == 0) {
      EXPECT_EQ(chunks, 0);
    } else {
      EXPECT_GT(chunks, 3);
    }
    loop->ControlTraining("job-1", TrainWorkload::Control::kCancel);
    listener.ended.WaitForNotification();
  }
}

// Requests start by priority, then arrival, whatever else waits.
TEST(DeviceLoopTest, WaitingRequestsStartByPriorityThenArrival) {
  EventLog log;
  std::unique_ptr<DeviceLoop> loop = Loop(0.1, TrainExecution::kBackground);
  ASSERT_NE(loop, nullptr);
  auto model = std::make_shared<FakeImageModel>(&log, absl::Milliseconds(1), /*slots=*/1);
  auto entry = ImageEntry(model);
  // Hold the loop while the requests arrive, so they all wait together.
  absl::Notification release;
  loop->Post([&] { release.WaitForNotification(); });
  std::vector<std::shared_ptr<Stream>> streams;
  const std::vector<std::pair<uint64_t, int>> arrivals = {{1, 0}, {2, 5}, {3, -3}, {4, 5}, {5, 0}};
  for (const auto& [seed, priority] : arrivals) {
    streams.push_back(std::make_shared<Stream>());
    loop->Submit(Image(entry, 2, seed, priority, streams.back()));
  }
  release.Notify();
  for (auto& s : streams) ASSERT_TRUE(s->Wait().ok());
  std::vector<std::string> starts;
  for (const std::string& e : log.events()) {
    if (e.rfind("image start", 0) == 0) starts.push_back(e.substr(12));
  }
  EXPECT_EQ(starts, (std::vector<std::string>{"2", "4", "1", "5", "3"}));
}

// With room for N waiting requests of a model, N + k arriving together: exactly k are refused at
// once with a retry hint, and the N all complete.
TEST(WorkerPoolTest, PerModelQueueCapRefusesExactlyTheExcessWithARetryHint) {
  testing::TempDir dir("pool_caps");
  const std::string model_dir = testing::WriteTinyImageModel(dir / "models/pixels");
  RegistryOptions ro;
  ro.max_images = 1;
  absl::StatusOr<std::unique_ptr<ModelRegistry>> registry =
      ModelRegistry::Create(dir / "models", "", ro);
  ASSERT_TRUE(registry.ok()) << registry.status();
  WorkerPoolOptions po;
  po.max_queue_per_model = 3;
  absl::StatusOr<std::unique_ptr<WorkerPool>> pool =
      WorkerPool::Create(po, registry->get(), nullptr);
  ASSERT_TRUE(pool.ok()) << pool.status();
  absl::StatusOr<std::shared_ptr<const ModelEntry>> entry = (*registry)->Lookup("pixels",
                                                                                ModelKind::kImage);
  ASSERT_TRUE(entry.ok());
  absl::Notification release;
  (*pool)->loop(0)->Post([&] { release.WaitForNotification(); });
  std::vector<std::shared_ptr<Stream>> accepted;
  int refused = 0;
  for (int i = 0; i < 3 + 4; ++i) {
    auto stream = std::make_shared<Stream>();
    std::unique_ptr<ImageRequest> r = Image(*entry, 2, i + 1, 0, stream);
    absl::Status s = (*pool)->Submit(r);
    if (s.ok()) {
      accepted.push_back(stream);
      continue;
    }
    ++refused;
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    EXPECT_TRUE(s.GetPayload(kRetryAfterMsPayload).has_value());
    EXPECT_NE(std::string(s.message()).find("--max_queue_per_model"), std::string::npos) << s;
  }
  EXPECT_EQ(refused, 4);
  release.Notify();
  for (auto& s : accepted) EXPECT_TRUE(s->Wait().ok());
  EXPECT_EQ(accepted.size(), 3u);
  // Once they have gone through, the queue has room again.
  auto stream = std::make_shared<Stream>();
  std::unique_ptr<ImageRequest> r = Image(*entry, 1, 99, 0, stream);
  EXPECT_TRUE((*pool)->Submit(r).ok());
  EXPECT_TRUE(stream->Wait().ok());
}

}  // namespace
}  // namespace tandem

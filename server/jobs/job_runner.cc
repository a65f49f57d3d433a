#include "server/jobs/job_runner.h"

#include <algorithm>
#include <filesystem>
#include <limits>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "models/torch/work_class.h"
#include "server/jobs/eval_sampler.h"
#include "server/jobs/train_spec.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

// Exported model folders kept per job (older ones are no longer served).
constexpr size_t kKeepExports = 3;

void PruneExports(const std::string& dir, size_t keep) {
  std::error_code ec;
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(dir, ec)) found.push_back(e.path());
  std::sort(found.begin(), found.end());
  for (size_t i = 0; i + keep < found.size(); ++i) fs::remove_all(found[i], ec);
}

// Bytes of the regular files directly in `dir` (a checkpoint's).
int64_t FolderBytes(const std::string& dir) {
  std::error_code ec;
  int64_t total = 0;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file(ec)) total += static_cast<int64_t>(e.file_size(ec));
  }
  return total;
}

std::string StepDir(const std::string& parent, int64_t step) {
  return absl::StrFormat("%s/step-%010d", parent, step);
}

JobRunner::Outcome Failed(const absl::Status& s, const std::string& doing = "") {
  return {JobRunner::Outcome::kFailed,
          doing.empty() ? std::string(s.message()) : absl::StrCat(doing, ": ", s.message())};
}

}  // namespace

JobRunner::JobRunner(JobRunnerOptions options, JobLedger* ledger, ModelRegistry* registry,
                     DeviceLoop* loop, Metrics* metrics)
    : options_(std::move(options)),
      id_(options_.train.job_id),
      ledger_(ledger),
      registry_(registry),
      loop_(loop),
      metrics_(metrics),
      best_loss_(std::numeric_limits<double>::infinity()) {}

JobRunner::~JobRunner() = default;

void JobRunner::Request(Control c) {
  switch (c) {
    case Control::kNone: return;
    case Control::kPause:
      pause_requested_ = true;
      loop_->ControlTraining(id_, TrainWorkload::Control::kPause);
      return;
    case Control::kCancel:
      requested_ = static_cast<int>(c);
      loop_->ControlTraining(id_, TrainWorkload::Control::kCancel);
      return;
    case Control::kStop:
      requested_ = static_cast<int>(c);
      loop_->ControlTraining(id_, TrainWorkload::Control::kStop);
      return;
  }
}

bool JobRunner::WithdrawPause() {
  if (!pause_requested_.exchange(false)) return false;
  loop_->ControlTraining(id_, TrainWorkload::Control::kResume);
  return true;
}

// --- the loop's reports, queued -----------------------------------------------------------------

void JobRunner::Queue(Event e) {
  absl::MutexLock lock(&mu_);
  events_.push_back(std::move(e));
}

int JobRunner::Backlog() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(events_.size());
}

JobRunner::Event JobRunner::Next() {
  bool wake;
  Event e;
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](std::deque<Event>* q) { return !q->empty(); }, &events_));
    wake = static_cast<int>(events_.size()) == kMaxListenerBacklog;
    e = std::move(events_.front());
    events_.pop_front();
  }
  if (wake) loop_->Post([] {});  // training waited for this room
  return e;
}

std::vector<StepMetrics> JobRunner::TakeQueuedSteps() {
  std::vector<StepMetrics> steps;
  bool wake = false;
  {
    absl::MutexLock lock(&mu_);
    while (!events_.empty() && std::holds_alternative<StepMetrics>(events_.front())) {
      wake |= static_cast<int>(events_.size()) == kMaxListenerBacklog;
      steps.push_back(std::get<StepMetrics>(events_.front()));
      events_.pop_front();
    }
  }
  if (wake) loop_->Post([] {});
  return steps;
}

void JobRunner::OnCalibrated(int chunk_rows, double seconds_per_row) {
  Queue(Calibrated{chunk_rows, seconds_per_row});
}
void JobRunner::OnStep(const StepMetrics& m) { Queue(m); }
void JobRunner::OnEvaluated(const EvalMetrics& m) { Queue(Evaluated{m}); }
void JobRunner::OnSnapshot(TrainSnapshot snapshot, const SnapshotReasons& why) {
  Queue(Snapped{std::move(snapshot), why});
}
void JobRunner::OnEnded(TrainEnd end, const absl::Status& status) { Queue(Ended{end, status}); }

// --- the lifecycle ------------------------------------------------------------------------------

JobRunner::Outcome JobRunner::Run() {
  absl::Status started = Start();
  // Building the trainer ran LibTorch work on this thread: its idle OpenMP team would count
  // against the cores for the job's whole life (see ReleaseThreadTeam).
  ReleaseThreadTeam();
  if (!started.ok()) return Failed(started);
  // Asked to go while the trainer was being built: nothing ran on the device yet.
  switch (static_cast<Control>(requested_.load())) {
    case Control::kCancel: return {Outcome::kCancelled};
    case Control::kStop: return {Outcome::kStopped};
    default: break;
  }
  TrainTask task;
  task.job_id = id_;
  task.trainer = std::move(trainer_);
  task.listener = this;
  if (options_.train.hyper.chunk_rows == 0) task.calibrate_slice = options_.train_slice;
  loop_->StartTraining(std::move(task));
  // A request that came meanwhile may have reached the loop before the task did: again.
  if (requested_ != static_cast<int>(Control::kNone)) Request(static_cast<Control>(requested_.load()));
  if (pause_requested_) Request(Control::kPause);
  return Follow();
}

absl::Status JobRunner::Start() {
  const TrainOptions& o = options_.train;
  const std::string checkpoints = options_.job_dir + "/checkpoints";
  std::string note;
  absl::StatusOr<std::unique_ptr<Trainer>> created =
      o.kind == ModelKind::kText
          ? CreateTextTrainer(o, options_.job_dir + "/work", checkpoints, &note)
          : CreateImageTrainer(o, options_.job_dir + "/work", checkpoints, &note);
  if (!created.ok()) return created.status();
  trainer_ = *std::move(created);
  total_steps_ = trainer_->total_steps();
  const double peak =
      metrics_ ? DevicePeakFlops(loop_->device(), options_.peak_flops, metrics_) : 0;
  job_metrics_ = std::make_unique<JobMetrics>(metrics_, o, peak);
  job_metrics_->Started(trainer_->step(), total_steps_);
  const Job job = ledger_->Snapshot(id_);
  spec_ = job.spec;
  if (job.best_eval) best_loss_ = job.best_eval->loss;
  ledger_->Log(id_, absl::StrCat(note.empty() ? "started" : note, " on ", loop_->device(), " (",
                                 trainer_->parameter_count(), " parameters, ",
                                 trainer_->options().hyper.precision, ")"));
  step_start_ = absl::Now();
  return absl::OkStatus();
}

JobRunner::Outcome JobRunner::Follow() {
  // After a failure here the task is cancelled on the device; its end is awaited all the same,
  // so nothing of the run outlives Run().
  std::optional<Outcome> failed;
  while (true) {
    Event e = Next();
    absl::Status s;
    if (auto* m = std::get_if<StepMetrics>(&e)) {
      std::vector<StepMetrics> steps = {*m};
      for (const StepMetrics& more : TakeQueuedSteps()) steps.push_back(more);
      if (!failed) s = RecordSteps(steps);
    } else if (auto* c = std::get_if<Calibrated>(&e)) {
      if (!failed) s = RecordCalibration(*c);
    } else if (auto* ev = std::get_if<Evaluated>(&e)) {
      pending_eval_ = ev->m;
    } else if (auto* snap = std::get_if<Snapped>(&e)) {
      if (!failed) s = HandleSnapshot(*snap);
    } else {
      return failed ? *failed : OutcomeOf(std::get<Ended>(e));
    }
    if (!s.ok() && !failed) {
      failed = Failed(s);
      loop_->ControlTraining(id_, TrainWorkload::Control::kCancel);
    }
  }
}

JobRunner::Outcome JobRunner::OutcomeOf(const Ended& e) {
  switch (e.end) {
    case TrainEnd::kCompleted: return {Outcome::kSucceeded};
    case TrainEnd::kPaused: return {Outcome::kPaused};
    case TrainEnd::kStopped: return {Outcome::kStopped};
    case TrainEnd::kCancelled: return {Outcome::kCancelled};
    case TrainEnd::kFailed: return Failed(e.status);
  }
  return {Outcome::kFailed, "unknown end"};
}

absl::Status JobRunner::RecordCalibration(const Calibrated& c) {
  absl::Status s = ledger_->Update(id_, [&](Job& job) {
    if (job.spec.hyper) job.spec.hyper->chunk_rows = c.rows;
  }, std::nullopt);
  if (!s.ok()) return s;
  ledger_->Log(id_, absl::StrFormat("chunks of %d rows (a row took %.1f ms; the target is %.0f ms "
                                    "a chunk, --train_slice_ms)",
                                    c.rows, 1000 * c.seconds_per_row,
                                    absl::ToDoubleMilliseconds(options_.train_slice)));
  return absl::OkStatus();
}

StepRecord JobRunner::Record(const StepMetrics& m, double took) {
  step_time_ema_ = step_time_ema_ == 0 ? took : 0.9 * step_time_ema_ + 0.1 * took;
  // The trainer's schedule is the truth (a plan or a budget's end moves it).
  if (m.total_steps > 0) total_steps_ = m.total_steps;
  StepRecord r;
  r.step = m.step;
  r.total_steps = total_steps_;
  r.loss = m.loss;
  r.lr = m.lr;
  r.grad_norm = m.grad_norm;
  if (took > 0) {
    r.tokens_per_second = static_cast<double>(m.tokens) / took;
    r.images_per_second = static_cast<double>(m.images) / took;
  }
  r.eta_seconds = step_time_ema_ * static_cast<double>(total_steps_ - m.step);
  job_metrics_->Step(m, took);
  return r;
}

absl::Status JobRunner::FollowBudget(int64_t step) {
  if (!budget_) {
    stored_steps_ = options_.train.hyper.steps;
    budget_.emplace(options_.train.hyper.max_seconds,
                    /*planned=*/stored_steps_ != kUnplannedSteps);
  }
  std::optional<TimeBudget::Change> change = budget_->Observe(step, absl::Now(), total_steps_);
  if (change) {
    if (absl::Status s = StoreSteps(change->total_steps); !s.ok()) return s;
    total_steps_ = change->total_steps;
    loop_->SetTrainingSteps(id_, change->total_steps);
    ledger_->Log(id_, change->why);
  } else if (step == total_steps_ && stored_steps_ != total_steps_) {
    // A cut lands after the steps the loop already had in flight: the spec says where it ended.
    return StoreSteps(total_steps_);
  }
  return absl::OkStatus();
}

absl::Status JobRunner::StoreSteps(int64_t steps) {
  absl::Status s = ledger_->Update(id_, [&](Job& job) {
    if (job.spec.hyper) job.spec.hyper->steps = steps;
  }, std::nullopt);
  if (s.ok()) stored_steps_ = steps;
  return s;
}

absl::Status JobRunner::RecordSteps(const std::vector<StepMetrics>& steps) {
  // Steps that arrive together (the store was slower than the device) share the time since the
  // last: the rates of a burst are its mean.
  const absl::Time now = absl::Now();
  const double took = absl::ToDoubleSeconds(now - step_start_) / static_cast<double>(steps.size());
  step_start_ = now;
  std::vector<StepRecord> records;
  for (const StepMetrics& m : steps) records.push_back(Record(m, took));
  if (options_.train.hyper.max_seconds > 0) {
    if (absl::Status s = FollowBudget(steps.back().step); !s.ok()) return s;
  }
  // Watchers get step metrics at a bounded rate, and always the last step.
  const bool last = steps.back().step == total_steps_;
  const bool notify = now - last_sent_ >= options_.metrics_interval || last;
  if (notify) last_sent_ = now;
  return ledger_->RecordSteps(id_, records, notify);
}

absl::Status JobRunner::HandleSnapshot(const Snapped& s) {
  const SnapshotReasons& why = s.why;
  if (why.checkpoint || why.final || why.pause || why.stop) {
    if (absl::Status st = Checkpoint(s.snapshot); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat(why.final ? "finishing: " : "writing a checkpoint: ",
                                                  st.message()));
    }
  }
  // One export of the step serves its samples and its deployment.
  std::optional<std::string> exported;
  if (why.evaluation || (why.final && !spec_.deploy_as.empty())) {
    absl::StatusOr<std::string> dir = Export(s.snapshot, options_.job_dir + "/eval");
    if (!dir.ok()) return dir.status();
    exported = *std::move(dir);
  }
  bool deployed = false;
  if (why.evaluation) {
    absl::Status st = RecordEvaluation(s.snapshot, *exported, /*may_deploy=*/!why.final, &deployed);
    if (!st.ok()) return st;
  }
  if (why.final && !spec_.deploy_as.empty()) {
    if (absl::Status st = Deploy(s.snapshot, *exported); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat("finishing: ", st.message()));
    }
    deployed = true;
  }
  if (exported && !deployed) {
    std::error_code ec;
    fs::remove_all(*exported, ec);
  }
  step_start_ = absl::Now();  // checkpoints and evaluations are not training time
  return absl::OkStatus();
}

absl::Status JobRunner::Checkpoint(const TrainSnapshot& snapshot) {
  const absl::Time t0 = absl::Now();
  absl::Status s = WriteCheckpoint(snapshot, options_.job_dir + "/checkpoints");
  if (!s.ok()) return s;
  const int64_t step = snapshot.step;
  job_metrics_->Checkpointed(absl::ToDoubleSeconds(absl::Now() - t0),
                             FolderBytes(StepDir(options_.job_dir + "/checkpoints", step)));
  s = ledger_->Update(id_, [&](Job& job) { job.checkpoint_step = step; }, std::nullopt);
  if (!s.ok()) return s;
  ledger_->Log(id_, absl::StrCat("checkpoint written at step ", step));
  return absl::OkStatus();
}

absl::Status JobRunner::RecordEvaluation(const TrainSnapshot& snapshot,
                                         const std::string& exported, bool may_deploy,
                                         bool* deployed) {
  if (!pending_eval_) return absl::InternalError("a snapshot for an evaluation that never ran");
  EvalMetrics ev = *std::move(pending_eval_);
  pending_eval_.reset();
  RegistryOptions ro = registry_->options();
  ro.max_sequences = 1;
  ro.max_images = std::max<int>(1, snapshot.samples.images.size());
  absl::StatusOr<EvalSampleResult> samples = SampleOnLoop(exported, snapshot.samples, loop_, ro);
  if (samples.ok()) {
    ev.text_sample = samples->text;
    ev.image_png = samples->png;
  } else {
    ledger_->Log(id_, absl::StrCat("the samples of step ", ev.step,
                                   " were not taken: ", samples.status().message()));
  }
  EvalRecord er;
  er.step = ev.step;
  er.loss = ev.loss;
  er.bits_per_byte = ev.bits_per_byte;
  er.text_sample = ev.text_sample;
  er.image_sample_png = ev.image_png;
  er.improved = ev.loss < best_loss_;
  job_metrics_->Evaluated(ev);
  absl::Status s = ledger_->Update(
      id_, [&](Job& job) { if (er.improved) job.best_eval = er; }, JobEvent::Now(er));
  if (!s.ok()) return s;
  if (!er.improved) return absl::OkStatus();
  best_loss_ = ev.loss;
  if (!may_deploy || !spec_.deploy_on_improvement) return absl::OkStatus();
  if (s = Deploy(snapshot, exported); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("deploying step ", ev.step, ": ", s.message()));
  }
  *deployed = true;
  return absl::OkStatus();
}

absl::StatusOr<std::string> JobRunner::Export(const TrainSnapshot& snapshot,
                                              const std::string& where) {
  const std::string path = StepDir(where, snapshot.step);
  std::error_code ec;
  fs::remove_all(path, ec);  // a step re-run after a crash
  fs::create_directories(where, ec);
  absl::Status s = ExportModel(snapshot, path, {absl::StrCat("train job ", id_), id_, snapshot.step});
  if (!s.ok()) return s;
  return path;
}

absl::Status JobRunner::Deploy(const TrainSnapshot& snapshot, const std::string& exported) {
  // The exported folder becomes the deployment (one rename: no second copy of the weights).
  const std::string models = options_.job_dir + "/models";
  const std::string path = StepDir(models, snapshot.step);
  std::error_code ec;
  fs::create_directories(models, ec);
  fs::remove_all(path, ec);
  fs::rename(exported, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("moving ", exported, " to ", path, ": ", ec.message()));
  absl::StatusOr<std::shared_ptr<const ModelEntry>> entry =
      registry_->Publish(spec_.deploy_as, path);
  if (!entry.ok()) return entry.status();
  PruneExports(models, kKeepExports);
  const int64_t step = snapshot.step;
  absl::Status s = ledger_->Update(id_, [&](Job& job) {
    job.deployed_as = spec_.deploy_as;
    job.deployed_step = step;
  }, std::nullopt);
  if (!s.ok()) return s;
  ledger_->Log(id_, absl::StrCat("deployed step ", step, " as \"", spec_.deploy_as,
                                 "\" (version ", (*entry)->version, ")"));
  return absl::OkStatus();
}

}  // namespace tandem

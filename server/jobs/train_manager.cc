#include "server/jobs/train_manager.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/jobs/train_spec.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

absl::Status NotFound(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("no training job \"", id, "\""));
}

void Warn(const std::string& id, const absl::Status& s) {
  std::fprintf(stderr, "tandemd: job %s: %s\n", id.c_str(), s.ToString().c_str());
}

}  // namespace

TrainManager::TrainManager(TrainManagerOptions options, ModelRegistry* registry,
                           WorkerPool* pool, Metrics* metrics, std::unique_ptr<JobStore> store)
    : options_(std::move(options)),
      registry_(registry),
      pool_(pool),
      metrics_(metrics),
      store_(std::move(store)) {}

absl::StatusOr<std::unique_ptr<TrainManager>> TrainManager::Create(TrainManagerOptions options,
                                                                   ModelRegistry* registry,
                                                                   WorkerPool* pool,
                                                                   Metrics* metrics) {
  if (options.state_dir.empty()) return absl::InvalidArgumentError("state_dir is required");
  std::error_code ec;
  fs::create_directories(options.state_dir + "/jobs", ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create --state_dir ", options.state_dir, ": ", ec.message()));
  }
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(options.state_dir + "/jobs.db");
  if (!store.ok()) return store.status();
  absl::StatusOr<std::vector<Job>> jobs = (*store)->List({});
  if (!jobs.ok()) return jobs.status();
  std::unique_ptr<TrainManager> m(
      new TrainManager(std::move(options), registry, pool, metrics, *std::move(store)));
  absl::MutexLock lock(&m->mu_);
  if (absl::Status s = m->RecoverLocked(*std::move(jobs)); !s.ok()) return s;
  m->UpdateJobGaugesLocked();
  m->ScheduleLocked();
  return m;
}

absl::Status TrainManager::RecoverLocked(std::vector<Job> jobs) {
  for (Job& job : jobs) {
    // Deployments outlive restarts: publish them again, in submission order (the last deployment
    // of a name wins, as it did before).
    if (!job.deployed_as.empty() && registry_) {
      const std::string path =
          absl::StrFormat("%s/models/step-%010d", JobDir(job.id), job.deployed_step);
      absl::StatusOr<std::shared_ptr<const ModelEntry>> e = registry_->Publish(job.deployed_as, path);
      if (!e.ok()) {
        std::fprintf(stderr, "tandemd: cannot re-deploy %s from job %s: %s\n",
                     job.deployed_as.c_str(), job.id.c_str(), e.status().ToString().c_str());
      }
    }
    const std::string id = job.id;
    Job& stored = jobs_[id] = std::move(job);
    if (stored.state != JobState::kRunning) continue;
    // It was running when the server stopped (or was killed): back to the queue, ahead of
    // everything else, to resume from its newest good checkpoint.
    recovered_.push_back(id);
    if (absl::Status s = SetStateLocked(&stored, JobState::kQueued, ""); !s.ok()) return s;
    LogLocked(id, "the server restarted: the job resumes from its newest good checkpoint");
  }
  return absl::OkStatus();
}

TrainManager::~TrainManager() { Stop(); }

std::string TrainManager::JobDir(const std::string& id) const {
  return options_.state_dir + "/jobs/" + id;
}

// --- persistence and fan-out ---------------------------------------------------------------------

absl::Status TrainManager::SaveLocked(const Job& job, const JobEvent* event) {
  JobStore::WriteBatch batch;
  batch.Update(job);
  if (event) batch.AppendEvent(job.id, *event);
  absl::Status s = store_->Commit(batch);
  if (!s.ok()) return s;
  jobs_[job.id] = job;
  if (event) NotifyLocked(job.id, *event);
  return absl::OkStatus();
}

void TrainManager::NotifyLocked(const std::string& id, const JobEvent& event) {
  auto it = watchers_.find(id);
  if (it == watchers_.end()) return;
  const JobState* state = std::get_if<JobState>(&event.event);
  const bool final = state && IsFinal(*state);
  auto& sinks = it->second;
  sinks.erase(std::remove_if(sinks.begin(), sinks.end(),
                             [](const Sink& s) { return s->cancelled(); }),
              sinks.end());
  for (const Sink& sink : sinks) {
    sink->Send(event);
    if (final) sink->Finish(absl::OkStatus());
  }
  if (final || sinks.empty()) watchers_.erase(it);
}

absl::Status TrainManager::SetStateLocked(Job* job, JobState state, const std::string& error) {
  job->state = state;
  if (!error.empty()) job->error = error;
  const absl::Time now = absl::Now();
  if (state == JobState::kRunning && job->started == absl::InfinitePast()) job->started = now;
  if (IsFinal(state)) job->finished = now;
  const JobEvent e{now, state};
  absl::Status s = SaveLocked(*job, &e);
  if (!error.empty()) LogLocked(job->id, absl::StrCat("failed: ", error));
  UpdateJobGaugesLocked();
  return s;
}

void TrainManager::LogLocked(const std::string& id, const std::string& text) {
  std::fprintf(stderr, "tandemd: %s: %s\n", id.c_str(), text.c_str());
  const JobEvent e = JobEvent::Now(JobEvent::Log{text});
  if (absl::Status s = store_->AppendEvent(id, e); !s.ok()) Warn(id, s);
  NotifyLocked(id, e);
}

void TrainManager::UpdateJobGaugesLocked() {
  if (!metrics_) return;
  std::map<JobState, int> counts;
  for (const auto& [id, job] : jobs_) ++counts[job.state];
  for (int i = 1; i <= 6; ++i) {
    const auto s = static_cast<JobState>(i);
    std::string name = JobStateName(s);
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    metrics_->train_jobs.Add({{"state", name}}).Set(counts[s]);
  }
}

// --- JobLedger -----------------------------------------------------------------------------------

absl::Status TrainManager::Update(const std::string& id, const std::function<void(Job&)>& change,
                                  const std::optional<JobEvent>& event) {
  absl::MutexLock lock(&mu_);
  Job job = jobs_[id];
  change(job);
  return SaveLocked(job, event ? &*event : nullptr);
}

absl::Status TrainManager::RecordSteps(const std::string& id,
                                       const std::vector<StepRecord>& steps, bool notify) {
  if (steps.empty()) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  Job job = jobs_[id];
  job.latest = steps.back();
  JobStore::WriteBatch batch;
  batch.Update(job);
  for (const StepRecord& m : steps) batch.RecordMetrics(id, m);
  if (absl::Status s = store_->Commit(batch); !s.ok()) return s;
  jobs_[id] = std::move(job);
  if (notify) NotifyLocked(id, JobEvent::Now(steps.back()));
  return absl::OkStatus();
}

void TrainManager::Log(const std::string& id, const std::string& text) {
  absl::MutexLock lock(&mu_);
  LogLocked(id, text);
}

Job TrainManager::Snapshot(const std::string& id) {
  absl::MutexLock lock(&mu_);
  return jobs_[id];
}

// --- scheduling ----------------------------------------------------------------------------------

TrainSpecContext TrainManager::SpecContext() const {
  return TrainSpecContext{options_.data_dir, registry_, options_.keep_checkpoints};
}

absl::StatusOr<Job> TrainManager::Submit(JobSpec spec) {
  TrainSpecContext context = SpecContext();
  context.check_dataset_content = true;
  absl::StatusOr<TrainOptions> resolved = ResolveTrainSpec(&spec, context);
  if (!resolved.ok()) return resolved.status();
  if (pool_) {
    absl::Status fits = pool_->placement().CheckJobFits(EstimateTrainingBytes(*resolved));
    if (!fits.ok()) return fits;
  }
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the server is shutting down");
  absl::StatusOr<Job> job = store_->Create(spec, absl::Now());
  if (!job.ok()) return job.status();
  const std::string id = job->id;
  jobs_[id] = *std::move(job);
  if (absl::Status s = store_->AppendEvent(id, JobEvent::Now(JobState::kQueued)); !s.ok()) {
    return s;
  }
  UpdateJobGaugesLocked();
  ScheduleLocked();
  return jobs_[id];
}

Job* TrainManager::NextQueuedLocked() {
  for (const std::string& id : recovered_) {
    if (jobs_[id].state == JobState::kQueued) return &jobs_[id];
  }
  Job* next = nullptr;
  for (auto& [id, job] : jobs_) {
    if (job.state != JobState::kQueued) continue;
    if (!next || job.spec.priority > next->spec.priority) next = &job;
  }
  return next;
}

void TrainManager::ScheduleLocked() {
  if (stopping_ || !options_.start_jobs || pool_ == nullptr) return;
  while (StartNextLocked()) {
  }
}

bool TrainManager::StartNextLocked() {
  Job* job = NextQueuedLocked();
  if (!job) return false;
  // Resolve again: --data_dir or the registry may have changed since the submission.
  JobSpec spec = job->spec;
  absl::StatusOr<TrainOptions> resolved = ResolveTrainSpec(&spec, SpecContext());
  if (!resolved.ok()) {
    (void)SetStateLocked(job, JobState::kFailed, std::string(resolved.status().message()));
    return true;  // the next one may run
  }
  const int device = pool_->placement().PlaceJob(job->id, EstimateTrainingBytes(*resolved));
  if (device < 0) return false;  // it waits for a device; so do the jobs behind it
  recovered_.erase(std::remove(recovered_.begin(), recovered_.end(), job->id), recovered_.end());
  JobRunnerOptions ro;
  ro.train = *std::move(resolved);
  ro.train.job_id = job->id;
  DeviceLoop* loop = pool_->loop(device);
  ro.train.device = loop->device();
  ro.job_dir = JobDir(job->id);
  ro.metrics_interval = options_.metrics_interval;
  ro.train_slice = options_.train_slice;
  ro.peak_flops = options_.peak_flops;
  ++job->attempt;
  if (absl::Status s = SetStateLocked(job, JobState::kRunning, ""); !s.ok()) {
    Warn(job->id, s);
    pool_->placement().JobEnded(device);
    return false;
  }
  auto run = std::make_unique<Running>();
  run->device = device;
  run->runner = std::make_unique<JobRunner>(std::move(ro), this, registry_, loop, metrics_);
  Running* raw = run.get();
  running_[job->id] = std::move(run);
  raw->thread = std::thread([this, id = job->id] { RunJob(id); });
  return true;
}

void TrainManager::RunJob(const std::string& id) {
  JobRunner* runner;
  {
    absl::MutexLock lock(&mu_);
    runner = running_.at(id)->runner.get();
  }
  const JobRunner::Outcome outcome = runner->Run();
  absl::MutexLock lock(&mu_);
  EndRunLocked(id, outcome);
  ScheduleLocked();
}

void TrainManager::EndRunLocked(const std::string& id, const JobRunner::Outcome& outcome) {
  Job& job = jobs_[id];
  absl::Status s;
  switch (outcome.kind) {
    case JobRunner::Outcome::kSucceeded: s = SetStateLocked(&job, JobState::kSucceeded, ""); break;
    case JobRunner::Outcome::kFailed: s = SetStateLocked(&job, JobState::kFailed, outcome.error); break;
    case JobRunner::Outcome::kCancelled: s = SetStateLocked(&job, JobState::kCancelled, ""); break;
    case JobRunner::Outcome::kPaused:
      s = SetStateLocked(&job, JobState::kPaused, "");
      LogLocked(id, absl::StrCat("paused at step ", job.checkpoint_step));
      break;
    case JobRunner::Outcome::kStopped: break;  // stays RUNNING in the store: resumed at next start
  }
  if (!s.ok()) Warn(id, s);
  auto it = running_.find(id);
  pool_->placement().JobEnded(it->second->device);
  finished_threads_.push_back(std::move(it->second->thread));
  running_.erase(it);
}

// --- queries and control -------------------------------------------------------------------------

absl::StatusOr<Job> TrainManager::FindLocked(const std::string& id) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return NotFound(id);
  return it->second;
}

absl::StatusOr<Job> TrainManager::Get(const std::string& id, bool include_history) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Job> job = FindLocked(id);
  if (!job.ok() || !include_history) return job;
  absl::StatusOr<std::vector<StepRecord>> history = store_->History(id);
  if (!history.ok()) return history.status();
  job->history = *std::move(history);
  return job;
}

absl::StatusOr<std::vector<Job>> TrainManager::List(const std::vector<JobState>& states) {
  absl::MutexLock lock(&mu_);
  std::vector<Job> out;
  for (const auto& [id, job] : jobs_) {
    if (states.empty() || std::find(states.begin(), states.end(), job.state) != states.end()) {
      out.push_back(job);
    }
  }
  return out;
}

absl::StatusOr<Job*> TrainManager::UnfinishedJobLocked(const std::string& id) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return NotFound(id);
  if (IsFinal(it->second.state)) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " has already ended (", JobStateName(it->second.state), ")"));
  }
  return &it->second;
}

absl::StatusOr<Job> TrainManager::Cancel(const std::string& id) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Job*> job = UnfinishedJobLocked(id);
  if (!job.ok()) return job.status();
  if (auto run = running_.find(id); run != running_.end()) {
    run->second->runner->Request(JobRunner::Control::kCancel);
    LogLocked(id, "cancel requested: stopping at the next micro-step");
  } else if (absl::Status s = SetStateLocked(*job, JobState::kCancelled, ""); !s.ok()) {
    return s;
  }
  return **job;
}

absl::StatusOr<Job> TrainManager::Pause(const std::string& id) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Job*> job = UnfinishedJobLocked(id);
  if (!job.ok()) return job.status();
  if (auto run = running_.find(id); run != running_.end()) {
    run->second->runner->Request(JobRunner::Control::kPause);
    LogLocked(id, "pause requested: checkpointing at the next step boundary");
  } else if ((*job)->state == JobState::kQueued) {
    if (absl::Status s = SetStateLocked(*job, JobState::kPaused, ""); !s.ok()) return s;
  }
  return **job;
}

absl::StatusOr<Job> TrainManager::Resume(const std::string& id) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Job*> job = UnfinishedJobLocked(id);
  if (!job.ok()) return job.status();
  if (auto run = running_.find(id); run != running_.end()) {
    // Still running: withdraw a pause that has not taken effect yet.
    if (run->second->runner->WithdrawPause()) LogLocked(id, "pause withdrawn");
  } else if ((*job)->state == JobState::kPaused) {
    if (absl::Status s = SetStateLocked(*job, JobState::kQueued, ""); !s.ok()) return s;
    ScheduleLocked();
  }
  return jobs_[id];
}

absl::Status TrainManager::Watch(const std::string& id, bool replay, Sink sink) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return NotFound(id);
  // Under mu_, which every event's write and fan-out holds too: nothing is missed or repeated
  // between the stored events and the live ones.
  std::vector<JobEvent> past;
  if (replay) {
    absl::StatusOr<std::vector<JobEvent>> events = store_->Events(id);
    if (!events.ok()) return events.status();
    past = *std::move(events);
  }
  sink->Send(JobEvent::Now(JobEvent::Snapshot{it->second}));
  for (JobEvent& p : past) sink->Send(std::move(p));
  if (IsFinal(it->second.state)) {
    sink->Finish(absl::OkStatus());
  } else if (stopping_) {
    sink->Finish(absl::UnavailableError("the server is shutting down"));
  } else {
    watchers_[id].push_back(std::move(sink));
  }
  return absl::OkStatus();
}

void TrainManager::Stop() {
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [id, run] : running_) run->runner->Request(JobRunner::Control::kStop);
  }
  // Wait for the running jobs to leave (each finishes its micro-step, maybe a checkpoint).
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](std::map<std::string, std::unique_ptr<Running>>* r) { return r->empty(); },
        &running_));
    threads.swap(finished_threads_);
    for (auto& [id, sinks] : watchers_) {
      for (const Sink& sink : sinks) {
        sink->Finish(absl::UnavailableError("the server is shutting down"));
      }
    }
    watchers_.clear();
  }
  for (std::thread& t : threads) {
    if (t.joinable()) t.join();
  }
}

}  // namespace tandem

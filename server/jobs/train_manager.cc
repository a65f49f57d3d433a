#include "server/jobs/train_manager.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <optional>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "google/protobuf/util/time_util.h"
#include "server/core/device_loop.h"
#include "server/jobs/train_spec.h"
#include "trainer/trainer.h"

namespace tandem {

namespace fs = std::filesystem;
using tandem::v1::EvalResult;
using tandem::v1::TrainJob;
using tandem::v1::TrainJobEvent;
using tandem::v1::TrainJobSpec;
using tandem::v1::TrainJobState;
using tandem::v1::TrainMetrics;

namespace {

google::protobuf::Timestamp ToProto(absl::Time t) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

bool IsFinal(TrainJobState s) {
  return s == tandem::v1::SUCCEEDED || s == tandem::v1::FAILED || s == tandem::v1::CANCELLED;
}

// "RUNNING", "PAUSED"... as in the .proto.
const std::string& StateName(TrainJobState s) { return tandem::v1::TrainJobState_Name(s); }

TrainJobEvent Event() {
  TrainJobEvent e;
  *e.mutable_time() = ToProto(absl::Now());
  return e;
}

// Keeps the newest `keep` exported model folders of a job (older ones are no longer served).
void PruneExports(const std::string& dir, size_t keep) {
  std::error_code ec;
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(dir, ec)) found.push_back(e.path());
  std::sort(found.begin(), found.end());
  for (size_t i = 0; i + keep < found.size(); ++i) fs::remove_all(found[i], ec);
}

}  // namespace

struct TrainManager::Running {
  enum Request { kNone = 0, kPause, kCancel, kStop };
  std::string id;
  int loop_index = 0;
  DeviceLoop* loop = nullptr;
  TrainOptions options;
  std::atomic<int> request{kNone};
  std::thread thread;
};

TrainManager::TrainManager(TrainManagerOptions options, ModelRegistry* registry,
                           WorkerPool* pool, Metrics* metrics,
                           std::unique_ptr<TrainJobStore> store)
    : options_(std::move(options)),
      registry_(registry),
      pool_(pool),
      metrics_(metrics),
      store_(std::move(store)),
      loop_busy_(pool ? pool->size() : 0, false) {}

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
  absl::StatusOr<std::unique_ptr<TrainJobStore>> store =
      TrainJobStore::Open(options.state_dir + "/jobs.db");
  if (!store.ok()) return store.status();
  absl::StatusOr<std::vector<TrainJob>> jobs = (*store)->List({});
  if (!jobs.ok()) return jobs.status();
  std::unique_ptr<TrainManager> m(
      new TrainManager(std::move(options), registry, pool, metrics, *std::move(store)));
  absl::MutexLock lock(&m->mu_);
  for (TrainJob& job : *jobs) {
    // Deployments outlive restarts: publish them again, in submission order (the last deployment
    // of a name wins, as it did before).
    if (!job.deployed_as().empty() && registry) {
      const std::string path =
          absl::StrFormat("%s/models/step-%010d", m->JobDir(job.id()), job.deployed_step());
      absl::StatusOr<std::shared_ptr<const ModelEntry>> e = registry->Publish(job.deployed_as(), path);
      if (!e.ok()) {
        std::fprintf(stderr, "tandemd: cannot re-deploy %s from job %s: %s\n",
                     job.deployed_as().c_str(), job.id().c_str(), e.status().ToString().c_str());
      }
    }
    const std::string id = job.id();
    m->jobs_[id] = std::move(job);
    if (m->jobs_[id].state() == tandem::v1::RUNNING) {
      // It was running when the server stopped (or was killed): back to the queue, ahead of
      // everything else, to resume from its newest good checkpoint.
      m->recovered_.push_back(id);
      TrainJob& j = m->jobs_[id];
      absl::Status s = m->SetStateLocked(&j, tandem::v1::QUEUED, "");
      if (!s.ok()) return s;
      m->LogLocked(id, "the server restarted: the job resumes from its newest good checkpoint");
    }
  }
  m->UpdateJobGaugesLocked();
  m->ScheduleLocked();
  return m;
}

TrainManager::~TrainManager() { Stop(); }

std::string TrainManager::JobDir(const std::string& id) const {
  return options_.state_dir + "/jobs/" + id;
}

absl::Status TrainManager::SaveLocked(const TrainJob& job, const TrainJobEvent* event) {
  TrainJobStore::WriteBatch batch;
  batch.Update(job);
  if (event) batch.AppendEvent(job.id(), *event);
  absl::Status s = store_->Commit(batch);
  if (!s.ok()) return s;
  jobs_[job.id()] = job;
  if (event) NotifyLocked(job.id(), *event);
  return absl::OkStatus();
}

void TrainManager::NotifyLocked(const std::string& id, const TrainJobEvent& event) {
  auto it = watchers_.find(id);
  if (it == watchers_.end()) return;
  const bool final = event.has_state() && IsFinal(event.state());
  auto& sinks = it->second;
  sinks.erase(std::remove_if(sinks.begin(), sinks.end(),
                             [](const EventSink& s) { return s->cancelled(); }),
              sinks.end());
  for (const EventSink& sink : sinks) {
    sink->Send(event);
    if (final) sink->Finish(absl::OkStatus());
  }
  if (final || sinks.empty()) watchers_.erase(it);
}

absl::Status TrainManager::SetStateLocked(TrainJob* job, TrainJobState state,
                                          const std::string& error) {
  job->set_state(state);
  if (!error.empty()) job->set_error(error);
  const absl::Time now = absl::Now();
  if (state == tandem::v1::RUNNING && !job->has_started()) *job->mutable_started() = ToProto(now);
  if (IsFinal(state)) *job->mutable_finished() = ToProto(now);
  TrainJobEvent e = Event();
  e.set_state(state);
  absl::Status s = SaveLocked(*job, &e);
  if (!error.empty()) LogLocked(job->id(), absl::StrCat("failed: ", error));
  UpdateJobGaugesLocked();
  return s;
}

void TrainManager::LogLocked(const std::string& id, const std::string& text) {
  std::fprintf(stderr, "tandemd: %s: %s\n", id.c_str(), text.c_str());
  TrainJobEvent e = Event();
  e.set_log(text);
  absl::Status s = store_->AppendEvent(id, e);
  if (!s.ok()) std::fprintf(stderr, "tandemd: job %s: %s\n", id.c_str(), s.ToString().c_str());
  NotifyLocked(id, e);
}

void TrainManager::UpdateJobGaugesLocked() {
  if (!metrics_) return;
  std::map<TrainJobState, int> counts;
  for (const auto& [id, job] : jobs_) ++counts[job.state()];
  for (TrainJobState s : {tandem::v1::QUEUED, tandem::v1::RUNNING, tandem::v1::PAUSED,
                          tandem::v1::SUCCEEDED, tandem::v1::FAILED, tandem::v1::CANCELLED}) {
    std::string name = StateName(s);
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    metrics_->train_jobs.Add({{"state", name}}).Set(counts[s]);
  }
}

absl::StatusOr<TrainJob> TrainManager::Submit(TrainJobSpec spec) {
  TrainSpecContext ctx{options_.data_dir, registry_, options_.memory_budget_bytes,
                       options_.keep_checkpoints};
  absl::StatusOr<TrainOptions> resolved = ResolveTrainSpec(&spec, ctx);
  if (!resolved.ok()) return resolved.status();
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the server is shutting down");
  absl::StatusOr<TrainJob> job = store_->Create(spec, absl::Now());
  if (!job.ok()) return job.status();
  jobs_[job->id()] = *job;
  TrainJobEvent e = Event();
  e.set_state(tandem::v1::QUEUED);
  if (absl::Status s = store_->AppendEvent(job->id(), e); !s.ok()) return s;
  UpdateJobGaugesLocked();
  ScheduleLocked();
  return jobs_[job->id()];
}

void TrainManager::ScheduleLocked() {
  if (stopping_ || !options_.start_jobs || pool_ == nullptr) return;
  for (int i = 0; i < static_cast<int>(loop_busy_.size()); ++i) {
    while (!loop_busy_[i]) {
      // Recovered jobs first, then priority, then submission order (ids are ordered).
      TrainJob* next = nullptr;
      for (const std::string& id : recovered_) {
        if (jobs_[id].state() == tandem::v1::QUEUED) {
          next = &jobs_[id];
          break;
        }
      }
      if (!next) {
        for (auto& [id, job] : jobs_) {
          if (job.state() != tandem::v1::QUEUED) continue;
          if (!next || job.spec().priority() > next->spec().priority()) next = &job;
        }
      }
      if (!next) return;
      recovered_.erase(std::remove(recovered_.begin(), recovered_.end(), next->id()),
                       recovered_.end());
      // Resolve again: --data_dir or the registry may have changed since the submission.
      TrainJobSpec spec = next->spec();
      TrainSpecContext ctx{options_.data_dir, registry_, options_.memory_budget_bytes,
                           options_.keep_checkpoints};
      absl::StatusOr<TrainOptions> resolved = ResolveTrainSpec(&spec, ctx);
      if (!resolved.ok()) {
        (void)SetStateLocked(next, tandem::v1::FAILED, std::string(resolved.status().message()));
        continue;
      }
      auto run = std::make_unique<Running>();
      run->id = next->id();
      run->loop_index = i;
      run->loop = pool_->loop(i);
      run->options = *std::move(resolved);
      run->options.job_id = next->id();
      run->options.device = run->loop->device();
      next->set_attempt(next->attempt() + 1);
      if (absl::Status s = SetStateLocked(next, tandem::v1::RUNNING, ""); !s.ok()) {
        std::fprintf(stderr, "tandemd: job %s: %s\n", next->id().c_str(), s.ToString().c_str());
        return;
      }
      loop_busy_[i] = true;
      Running* raw = run.get();
      running_[run->id] = std::move(run);
      raw->thread = std::thread([this, raw] { RunJob(raw); });
    }
  }
}

void TrainManager::RunJob(Running* run) {
  const std::string id = run->id;
  const TrainOptions& o = run->options;
  const std::string dir = JobDir(id);
  const std::string checkpoints = dir + "/checkpoints";
  enum class Outcome { kSucceeded, kFailed, kCancelled, kPaused, kStopped };
  Outcome outcome = Outcome::kSucceeded;
  std::string error;
  const char* kind = o.kind == ModelKind::kText ? "text" : "image";
  const std::string device = run->loop->device();

  std::string note;
  absl::StatusOr<std::unique_ptr<Trainer>> created =
      o.kind == ModelKind::kText ? CreateTextTrainer(o, dir + "/work", checkpoints, &note)
                                 : CreateImageTrainer(o, dir + "/work", checkpoints, &note);
  double best_loss = std::numeric_limits<double>::infinity();
  TrainJobSpec spec;
  {
    absl::MutexLock lock(&mu_);
    const TrainJob& job = jobs_[id];
    spec = job.spec();
    if (job.has_best_eval()) best_loss = job.best_eval().loss();
    if (created.ok()) {
      LogLocked(id, absl::StrCat(note.empty() ? "started" : note, " on ", device, " (",
                                 (*created)->parameter_count(), " parameters)"));
    }
  }
  std::unique_ptr<Trainer> trainer;
  if (created.ok()) {
    trainer = *std::move(created);
  } else {
    outcome = Outcome::kFailed;
    error = std::string(created.status().message());
  }

  prometheus::Histogram* step_seconds = nullptr;
  prometheus::Counter* busy = nullptr;
  if (metrics_) {
    step_seconds = &metrics_->train_step_seconds.Add({{"device", device}},
                                                     Metrics::LatencyBuckets());
    busy = &metrics_->device_busy_seconds.Add({{"device", device}, {"work", "train"}});
  }
  int64_t last_checkpoint = trainer ? trainer->step() : 0;
  absl::Time step_start = absl::Now();
  absl::Time last_sent = absl::InfinitePast();
  double step_time_ema = 0;

  // Exports the model at the current step and publishes it as spec.deploy_as.
  auto deploy = [&](int64_t step) -> absl::Status {
    const std::string models = dir + "/models";
    const std::string path = absl::StrFormat("%s/step-%010d", models, step);
    std::error_code ec;
    fs::remove_all(path, ec);  // a step re-run after a crash
    fs::create_directories(models, ec);
    absl::Status s = trainer->ExportModel(
        path, {absl::StrCat("train job ", id), id, step});
    if (!s.ok()) return s;
    absl::StatusOr<std::shared_ptr<const ModelEntry>> entry =
        registry_->Publish(spec.deploy_as(), path);
    if (!entry.ok()) return entry.status();
    if (metrics_) {
      metrics_->model_info
          .Add({{"name", (*entry)->name}, {"kind", kind},
                {"version", absl::StrCat((*entry)->version)}})
          .Set(static_cast<double>((*entry)->parameters));
    }
    PruneExports(models, 3);
    absl::MutexLock lock(&mu_);
    TrainJob job = jobs_[id];
    job.set_deployed_as(spec.deploy_as());
    job.set_deployed_step(step);
    if (absl::Status st = SaveLocked(job, nullptr); !st.ok()) return st;
    LogLocked(id, absl::StrCat("deployed step ", step, " as \"", spec.deploy_as(), "\" (version ",
                               (*entry)->version, ")"));
    return absl::OkStatus();
  };
  auto checkpoint = [&]() -> absl::Status {
    absl::Status s = trainer->SaveCheckpoint(checkpoints);
    if (!s.ok()) return s;
    last_checkpoint = trainer->step();
    absl::MutexLock lock(&mu_);
    TrainJob job = jobs_[id];
    job.set_checkpoint_step(trainer->step());
    if (absl::Status st = SaveLocked(job, nullptr); !st.ok()) return st;
    LogLocked(id, absl::StrCat("checkpoint written at step ", trainer->step()));
    return absl::OkStatus();
  };

  while (trainer && trainer->step() < trainer->total_steps()) {
    const int request = run->request.load();
    if (request == Running::kCancel) {
      outcome = Outcome::kCancelled;
      break;
    }
    if ((request == Running::kPause || request == Running::kStop) &&
        trainer->at_step_boundary()) {
      if (trainer->step() > last_checkpoint) {
        if (absl::Status s = checkpoint(); !s.ok()) {
          outcome = Outcome::kFailed;
          error = std::string(s.message());
          break;
        }
      }
      outcome = request == Running::kPause ? Outcome::kPaused : Outcome::kStopped;
      break;
    }
    // One micro-step, on the device loop, between its inference iterations.
    absl::Notification done;
    absl::StatusOr<std::optional<StepMetrics>> result;
    absl::AnyInvocable<void()> fn = [&] {
      const absl::Time t0 = absl::Now();
      result = trainer->MicroStep();
      const double seconds = absl::ToDoubleSeconds(absl::Now() - t0);
      if (step_seconds) step_seconds->Observe(seconds);
      if (busy) busy->Increment(seconds);
      done.Notify();
    };
    if (!run->loop->TryPost(fn)) {
      outcome = Outcome::kStopped;
      break;
    }
    done.WaitForNotification();
    if (!result.ok()) {
      outcome = Outcome::kFailed;
      error = std::string(result.status().message());
      break;
    }
    if (!result->has_value()) continue;
    const StepMetrics m = **result;
    const absl::Time now = absl::Now();
    const double took = absl::ToDoubleSeconds(now - step_start);
    step_start = now;
    step_time_ema = step_time_ema == 0 ? took : 0.9 * step_time_ema + 0.1 * took;
    TrainMetrics tm;
    tm.set_step(m.step);
    tm.set_total_steps(trainer->total_steps());
    tm.set_loss(m.loss);
    tm.set_lr(m.lr);
    tm.set_grad_norm(m.grad_norm);
    if (took > 0) {
      tm.set_tokens_per_second(static_cast<double>(m.tokens) / took);
      tm.set_images_per_second(static_cast<double>(m.images) / took);
    }
    tm.set_eta_seconds(step_time_ema * static_cast<double>(trainer->total_steps() - m.step));
    if (metrics_) {
      metrics_->train_steps.Add({{"job", id}, {"kind", kind}}).Increment();
      metrics_->train_items.Add({{"job", id}, {"unit", m.tokens ? "tokens" : "images"}})
          .Increment(static_cast<double>(m.tokens + m.images));
      metrics_->train_loss.Add({{"job", id}}).Set(m.loss);
      metrics_->train_learning_rate.Add({{"job", id}}).Set(m.lr);
    }
    {
      absl::MutexLock lock(&mu_);
      TrainJob job = jobs_[id];
      *job.mutable_latest() = tm;
      TrainJobStore::WriteBatch batch;
      batch.Update(job).RecordMetrics(id, tm);
      if (absl::Status s = store_->Commit(batch); !s.ok()) {
        outcome = Outcome::kFailed;
        error = std::string(s.message());
        break;
      }
      jobs_[id] = job;
      // Watchers get step metrics at a bounded rate, and always the last step.
      if (now - last_sent >= options_.metrics_interval || m.step == trainer->total_steps()) {
        last_sent = now;
        TrainJobEvent e = Event();
        *e.mutable_metrics() = tm;
        NotifyLocked(id, e);
      }
    }
    const Hyperparams& h = o.hyper;
    const bool last = m.step == trainer->total_steps();
    if (last || (h.eval_every > 0 && m.step % h.eval_every == 0)) {
      absl::StatusOr<EvalMetrics> ev = trainer->Evaluate();
      if (!ev.ok()) {
        outcome = Outcome::kFailed;
        error = std::string(ev.status().message());
        break;
      }
      EvalResult er;
      er.set_step(ev->step);
      er.set_loss(ev->loss);
      er.set_bits_per_byte(ev->bits_per_byte);
      er.set_text_sample(ev->text_sample);
      er.set_image_sample_png(ev->image_png);
      er.set_improved(ev->loss < best_loss);
      if (metrics_) {
        metrics_->train_eval_loss.Add({{"job", id}}).Set(ev->loss);
        if (o.kind == ModelKind::kText) {
          metrics_->train_bits_per_byte.Add({{"job", id}}).Set(ev->bits_per_byte);
        }
      }
      {
        absl::MutexLock lock(&mu_);
        TrainJob job = jobs_[id];
        if (er.improved()) *job.mutable_best_eval() = er;
        TrainJobEvent e = Event();
        *e.mutable_eval() = er;
        if (absl::Status s = SaveLocked(job, &e); !s.ok()) {
          outcome = Outcome::kFailed;
          error = std::string(s.message());
          break;
        }
      }
      if (er.improved()) best_loss = ev->loss;
      if (er.improved() && spec.deploy_on_improvement() && !last) {
        if (absl::Status s = deploy(m.step); !s.ok()) {
          outcome = Outcome::kFailed;
          error = absl::StrCat("deploying step ", m.step, ": ", s.message());
          break;
        }
      }
    }
    if (!last && h.checkpoint_every > 0 && m.step % h.checkpoint_every == 0) {
      if (absl::Status s = checkpoint(); !s.ok()) {
        outcome = Outcome::kFailed;
        error = absl::StrCat("writing a checkpoint: ", s.message());
        break;
      }
    }
    step_start = absl::Now();  // evaluation and checkpoints are not training time
  }

  if (outcome == Outcome::kSucceeded && trainer) {
    // The final model: always exported (a later job can init_from it once deployed); published
    // when the spec names a deploy_as.
    absl::Status s = checkpoint();
    if (s.ok() && !spec.deploy_as().empty()) s = deploy(trainer->step());
    if (!s.ok()) {
      outcome = Outcome::kFailed;
      error = absl::StrCat("finishing: ", s.message());
    }
  }
  trainer.reset();  // frees the device memory before the next job starts

  absl::MutexLock lock(&mu_);
  TrainJob& job = jobs_[id];
  absl::Status s;
  switch (outcome) {
    case Outcome::kSucceeded: s = SetStateLocked(&job, tandem::v1::SUCCEEDED, ""); break;
    case Outcome::kFailed: s = SetStateLocked(&job, tandem::v1::FAILED, error); break;
    case Outcome::kCancelled: s = SetStateLocked(&job, tandem::v1::CANCELLED, ""); break;
    case Outcome::kPaused:
      s = SetStateLocked(&job, tandem::v1::PAUSED, "");
      LogLocked(id, absl::StrCat("paused at step ", job.checkpoint_step()));
      break;
    case Outcome::kStopped: break;  // stays RUNNING in the store: resumed at the next start
  }
  if (!s.ok()) std::fprintf(stderr, "tandemd: job %s: %s\n", id.c_str(), s.ToString().c_str());
  auto it = running_.find(id);
  loop_busy_[run->loop_index] = false;
  finished_threads_.push_back(std::move(it->second->thread));
  running_.erase(it);  // `run` is gone from here on
  ScheduleLocked();
}

absl::StatusOr<TrainJob> TrainManager::Get(const std::string& id, bool include_history) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no training job \"", id, "\""));
  TrainJob job = it->second;
  if (include_history) {
    absl::StatusOr<std::vector<TrainMetrics>> history = store_->History(id);
    if (!history.ok()) return history.status();
    for (TrainMetrics& m : *history) *job.add_history() = std::move(m);
  }
  return job;
}

absl::StatusOr<std::vector<TrainJob>> TrainManager::List(
    const std::vector<TrainJobState>& states) {
  absl::MutexLock lock(&mu_);
  std::vector<TrainJob> out;
  for (const auto& [id, job] : jobs_) {
    if (states.empty() || std::find(states.begin(), states.end(), job.state()) != states.end()) {
      out.push_back(job);
    }
  }
  return out;
}

absl::StatusOr<TrainJob*> TrainManager::UnfinishedJobLocked(const std::string& id) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no training job \"", id, "\""));
  if (IsFinal(it->second.state())) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " has already ended (", StateName(it->second.state()), ")"));
  }
  return &it->second;
}

absl::StatusOr<TrainJob> TrainManager::Cancel(const std::string& id) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<TrainJob*> found = UnfinishedJobLocked(id);
  if (!found.ok()) return found.status();
  TrainJob& job = **found;
  auto run = running_.find(id);
  if (run != running_.end()) {
    run->second->request.store(Running::kCancel);
    LogLocked(id, "cancel requested: stopping at the next micro-step");
  } else if (absl::Status s = SetStateLocked(&job, tandem::v1::CANCELLED, ""); !s.ok()) {
    return s;
  }
  return job;
}

absl::StatusOr<TrainJob> TrainManager::Pause(const std::string& id) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<TrainJob*> found = UnfinishedJobLocked(id);
  if (!found.ok()) return found.status();
  TrainJob& job = **found;
  auto run = running_.find(id);
  if (run != running_.end()) {
    run->second->request.store(Running::kPause);
    LogLocked(id, "pause requested: checkpointing at the next step boundary");
  } else if (job.state() == tandem::v1::QUEUED) {
    if (absl::Status s = SetStateLocked(&job, tandem::v1::PAUSED, ""); !s.ok()) return s;
  }
  return job;
}

absl::StatusOr<TrainJob> TrainManager::Resume(const std::string& id) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<TrainJob*> found = UnfinishedJobLocked(id);
  if (!found.ok()) return found.status();
  TrainJob& job = **found;
  auto run = running_.find(id);
  if (run != running_.end()) {
    // Still running: withdraw a pause that has not taken effect yet.
    int expected = Running::kPause;
    if (run->second->request.compare_exchange_strong(expected, Running::kNone)) {
      LogLocked(id, "pause withdrawn");
    }
  } else if (job.state() == tandem::v1::PAUSED) {
    if (absl::Status s = SetStateLocked(&job, tandem::v1::QUEUED, ""); !s.ok()) return s;
    ScheduleLocked();
  }
  return jobs_[id];
}

absl::Status TrainManager::Watch(const std::string& id, bool replay, EventSink sink) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no training job \"", id, "\""));
  // Under mu_, which every event's write and fan-out holds too: nothing is missed or repeated
  // between the stored events and the live ones.
  std::vector<TrainJobEvent> past;
  if (replay) {
    absl::StatusOr<std::vector<TrainJobEvent>> events = store_->Events(id);
    if (!events.ok()) return events.status();
    past = *std::move(events);
  }
  TrainJobEvent e = Event();
  *e.mutable_snapshot() = it->second;
  sink->Send(std::move(e));
  for (TrainJobEvent& p : past) sink->Send(std::move(p));
  if (IsFinal(it->second.state())) {
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
    for (auto& [id, run] : running_) run->request.store(Running::kStop);
  }
  // Wait for the running jobs to leave (each finishes its micro-step, maybe a checkpoint).
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](std::map<std::string, std::unique_ptr<Running>>* r) { return r->empty(); },
        &running_));
    threads.swap(finished_threads_);
    for (auto& [id, sinks] : watchers_) {
      for (const EventSink& sink : sinks) {
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

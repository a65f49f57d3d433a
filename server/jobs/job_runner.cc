#include "server/jobs/job_runner.h"

#include <algorithm>
#include <filesystem>
#include <limits>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"

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

const char* KindName(ModelKind k) { return k == ModelKind::kText ? "text" : "image"; }

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
      best_loss_(std::numeric_limits<double>::infinity()) {
  if (metrics_) {
    const std::string& device = loop_->device();
    step_seconds_ = &metrics_->train_step_seconds.Add({{"device", device}},
                                                      Metrics::LatencyBuckets());
    busy_ = &metrics_->device_busy_seconds.Add({{"device", device}, {"work", "train"}});
  }
}

JobRunner::~JobRunner() = default;

bool JobRunner::WithdrawPause() {
  int expected = static_cast<int>(Control::kPause);
  return request_.compare_exchange_strong(expected, static_cast<int>(Control::kNone));
}

JobRunner::Outcome JobRunner::Run() {
  if (absl::Status s = Start(); !s.ok()) return Failed(s);
  Outcome outcome = Train();
  if (outcome.kind == Outcome::kSucceeded) outcome = Finish();
  trainer_.reset();  // frees the device memory before the next job starts
  return outcome;
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
  const Job job = ledger_->Snapshot(id_);
  spec_ = job.spec;
  if (job.best_eval) best_loss_ = job.best_eval->loss;
  last_checkpoint_ = trainer_->step();
  ledger_->Log(id_, absl::StrCat(note.empty() ? "started" : note, " on ", loop_->device(), " (",
                                 trainer_->parameter_count(), " parameters)"));
  step_start_ = absl::Now();
  return absl::OkStatus();
}

JobRunner::Outcome JobRunner::Train() {
  const Hyperparams& h = options_.train.hyper;
  while (trainer_->step() < trainer_->total_steps()) {
    if (std::optional<Outcome> stop = HonourRequest()) return *stop;
    std::optional<StepMetrics> completed;
    bool taken = false;
    if (absl::Status s = RunMicroStep(&completed, &taken); !s.ok()) return Failed(s);
    if (!taken) return {Outcome::kStopped};
    if (!completed) continue;
    const int64_t step = completed->step;
    const bool last = step == trainer_->total_steps();
    if (absl::Status s = RecordStep(*completed); !s.ok()) return Failed(s);
    if (last || (h.eval_every > 0 && step % h.eval_every == 0)) {
      if (absl::Status s = Evaluate(step, last); !s.ok()) return Failed(s);
    }
    if (!last && h.checkpoint_every > 0 && step % h.checkpoint_every == 0) {
      if (absl::Status s = Checkpoint(); !s.ok()) return Failed(s, "writing a checkpoint");
    }
    step_start_ = absl::Now();  // evaluation and checkpoints are not training time
  }
  return {Outcome::kSucceeded};
}

std::optional<JobRunner::Outcome> JobRunner::HonourRequest() {
  const auto request = static_cast<Control>(request_.load());
  if (request == Control::kCancel) return Outcome{Outcome::kCancelled};
  if ((request != Control::kPause && request != Control::kStop) ||
      !trainer_->at_step_boundary()) {
    return std::nullopt;
  }
  if (trainer_->step() > last_checkpoint_) {
    if (absl::Status s = Checkpoint(); !s.ok()) return Failed(s);
  }
  return Outcome{request == Control::kPause ? Outcome::kPaused : Outcome::kStopped};
}

absl::Status JobRunner::RunMicroStep(std::optional<StepMetrics>* completed, bool* taken) {
  absl::Notification done;
  absl::StatusOr<std::optional<StepMetrics>> result;
  absl::AnyInvocable<void()> fn = [&] {
    const absl::Time t0 = absl::Now();
    result = trainer_->MicroStep();
    const double seconds = absl::ToDoubleSeconds(absl::Now() - t0);
    if (step_seconds_) step_seconds_->Observe(seconds);
    if (busy_) busy_->Increment(seconds);
    done.Notify();
  };
  *taken = loop_->TryPost(fn);
  if (!*taken) return absl::OkStatus();
  done.WaitForNotification();
  if (!result.ok()) return result.status();
  *completed = *result;
  return absl::OkStatus();
}

absl::Status JobRunner::RecordStep(const StepMetrics& m) {
  const absl::Time now = absl::Now();
  const double took = absl::ToDoubleSeconds(now - step_start_);
  step_start_ = now;
  step_time_ema_ = step_time_ema_ == 0 ? took : 0.9 * step_time_ema_ + 0.1 * took;
  StepRecord r;
  r.step = m.step;
  r.total_steps = trainer_->total_steps();
  r.loss = m.loss;
  r.lr = m.lr;
  r.grad_norm = m.grad_norm;
  if (took > 0) {
    r.tokens_per_second = static_cast<double>(m.tokens) / took;
    r.images_per_second = static_cast<double>(m.images) / took;
  }
  r.eta_seconds = step_time_ema_ * static_cast<double>(trainer_->total_steps() - m.step);
  if (metrics_) {
    metrics_->train_steps.Add({{"job", id_}, {"kind", KindName(options_.train.kind)}}).Increment();
    metrics_->train_items.Add({{"job", id_}, {"unit", m.tokens ? "tokens" : "images"}})
        .Increment(static_cast<double>(m.tokens + m.images));
    metrics_->train_loss.Add({{"job", id_}}).Set(m.loss);
    metrics_->train_learning_rate.Add({{"job", id_}}).Set(m.lr);
  }
  // Watchers get step metrics at a bounded rate, and always the last step.
  const bool notify =
      now - last_sent_ >= options_.metrics_interval || m.step == trainer_->total_steps();
  if (notify) last_sent_ = now;
  return ledger_->RecordStep(id_, r, notify);
}

absl::Status JobRunner::Evaluate(int64_t step, bool last) {
  absl::StatusOr<EvalMetrics> ev = trainer_->Evaluate();
  if (!ev.ok()) return ev.status();
  EvalRecord er;
  er.step = ev->step;
  er.loss = ev->loss;
  er.bits_per_byte = ev->bits_per_byte;
  er.text_sample = ev->text_sample;
  er.image_sample_png = ev->image_png;
  er.improved = ev->loss < best_loss_;
  if (metrics_) {
    metrics_->train_eval_loss.Add({{"job", id_}}).Set(ev->loss);
    if (options_.train.kind == ModelKind::kText) {
      metrics_->train_bits_per_byte.Add({{"job", id_}}).Set(ev->bits_per_byte);
    }
  }
  absl::Status s = ledger_->Update(
      id_, [&](Job& job) { if (er.improved) job.best_eval = er; }, JobEvent::Now(er));
  if (!s.ok()) return s;
  if (!er.improved) return absl::OkStatus();
  best_loss_ = ev->loss;
  if (!spec_.deploy_on_improvement || last) return absl::OkStatus();
  if (s = Deploy(step); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("deploying step ", step, ": ", s.message()));
  }
  return absl::OkStatus();
}

absl::Status JobRunner::Checkpoint() {
  absl::Status s = trainer_->SaveCheckpoint(options_.job_dir + "/checkpoints");
  if (!s.ok()) return s;
  last_checkpoint_ = trainer_->step();
  const int64_t step = trainer_->step();
  s = ledger_->Update(id_, [&](Job& job) { job.checkpoint_step = step; }, std::nullopt);
  if (!s.ok()) return s;
  ledger_->Log(id_, absl::StrCat("checkpoint written at step ", step));
  return absl::OkStatus();
}

absl::Status JobRunner::Deploy(int64_t step) {
  const std::string models = options_.job_dir + "/models";
  const std::string path = absl::StrFormat("%s/step-%010d", models, step);
  std::error_code ec;
  fs::remove_all(path, ec);  // a step re-run after a crash
  fs::create_directories(models, ec);
  absl::Status s = trainer_->ExportModel(path, {absl::StrCat("train job ", id_), id_, step});
  if (!s.ok()) return s;
  absl::StatusOr<std::shared_ptr<const ModelEntry>> entry =
      registry_->Publish(spec_.deploy_as, path);
  if (!entry.ok()) return entry.status();
  if (metrics_) {
    metrics_->model_info
        .Add({{"name", (*entry)->name}, {"kind", KindName(options_.train.kind)},
              {"version", absl::StrCat((*entry)->version)}})
        .Set(static_cast<double>((*entry)->parameters));
  }
  PruneExports(models, kKeepExports);
  s = ledger_->Update(id_, [&](Job& job) {
    job.deployed_as = spec_.deploy_as;
    job.deployed_step = step;
  }, std::nullopt);
  if (!s.ok()) return s;
  ledger_->Log(id_, absl::StrCat("deployed step ", step, " as \"", spec_.deploy_as,
                                 "\" (version ", (*entry)->version, ")"));
  return absl::OkStatus();
}

JobRunner::Outcome JobRunner::Finish() {
  // The final model: always checkpointed (a later job can init_from it once deployed);
  // published when the spec names a deploy_as.
  absl::Status s = Checkpoint();
  if (s.ok() && !spec_.deploy_as.empty()) s = Deploy(trainer_->step());
  if (!s.ok()) return Failed(s, "finishing");
  return {Outcome::kSucceeded};
}

}  // namespace tandem

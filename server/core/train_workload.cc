#include "server/core/train_workload.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "models/torch/yield_point.h"
#include "server/core/chunk_calibration.h"

namespace tandem {

bool TrainWorkload::HasWork() const {
  return task_.trainer != nullptr && task_.listener->Backlog() < kMaxListenerBacklog;
}

std::string TrainWorkload::job_id() const { return task_.trainer ? task_.job_id : std::string(); }

absl::Status TrainWorkload::Start(TrainTask task) {
  if (task_.trainer) {
    return absl::FailedPreconditionError(
        absl::StrCat("the device is training job ", task_.job_id, " already"));
  }
  {
    absl::MutexLock lock(&id_mu_);
    active_job_ = task.job_id;
  }
  task_ = std::move(task);
  phase_ = task_.calibrate_slice > absl::ZeroDuration() ? Phase::kCalibrate : Phase::kTrain;
  eval_started_ = false;
  due_ = SnapshotReasons();
  pause_ = stop_ = cancel_ = false;
  total_steps_ = 0;
  // Restored at its last step (the server died after the final checkpoint, before the job's end
  // was recorded): no step is left, only the end — the final evaluation, snapshot and deploy.
  if (task_.trainer->step() >= task_.trainer->total_steps()) {
    due_.final = due_.evaluation = true;
    phase_ = Phase::kEval;
  }
  return absl::OkStatus();
}

void TrainWorkload::Apply(const std::string& job_id, Control control) {
  {
    absl::MutexLock lock(&id_mu_);
    if (job_id != active_job_) return;  // a control for a task that has left
  }
  switch (control) {
    case Control::kPause: pause_ = true; break;
    case Control::kResume: pause_ = false; break;
    case Control::kCancel: cancel_ = true; break;
    case Control::kStop: stop_ = true; break;
  }
}

void TrainWorkload::SetTotalSteps(const std::string& job_id, int64_t steps) {
  absl::MutexLock lock(&id_mu_);
  if (job_id == active_job_) total_steps_ = steps;
}

TrainWorkload::UnitKind TrainWorkload::RunUnit() {
  if (const int64_t steps = total_steps_.exchange(0); steps > 0) {
    task_.trainer->SetTotalSteps(steps);
  }
  if (cancel_) {
    End(TrainEnd::kCancelled, absl::OkStatus());
    return UnitKind::kTrain;
  }
  switch (phase_) {
    case Phase::kCalibrate: return Calibrate();
    case Phase::kTrain: return Train();
    case Phase::kEval: return Evaluate();
    case Phase::kSnapshot: return TakeSnapshot();
  }
  return UnitKind::kTrain;
}

TrainWorkload::UnitKind TrainWorkload::Calibrate() {
  Trainer& t = *task_.trainer;
  phase_ = Phase::kTrain;
  absl::StatusOr<ChunkCalibration> c =
      ChooseChunkRows(t.options().hyper.batch_size, absl::ToDoubleSeconds(task_.calibrate_slice),
                      [&](int rows) -> absl::StatusOr<double> {
                        // A probe's time on the device, not the time it waited for inference.
                        const absl::Duration paused = ThreadPausedTime();
                        absl::StatusOr<double> s = t.ProbeChunk(rows);
                        if (s.ok()) *s -= absl::ToDoubleSeconds(ThreadPausedTime() - paused);
                        return s;
                      });
  if (!c.ok()) {
    End(TrainEnd::kFailed, c.status());
    return UnitKind::kTrain;
  }
  t.SetChunkRows(c->rows);
  task_.listener->OnCalibrated(c->rows, c->seconds_per_row);
  return UnitKind::kTrain;
}

TrainWorkload::UnitKind TrainWorkload::Train() {
  Trainer& t = *task_.trainer;
  if (t.at_step_boundary() && (pause_ || stop_)) {
    due_.pause = pause_;
    due_.stop = stop_;
    return TakeSnapshot();
  }
  absl::StatusOr<std::optional<StepMetrics>> m = t.RunChunk();
  if (!m.ok()) {
    End(TrainEnd::kFailed, m.status());
    return UnitKind::kTrain;
  }
  if (!m->has_value()) return UnitKind::kTrain;
  task_.listener->OnStep(**m);
  const Hyperparams& h = t.options().hyper;
  const int64_t step = (*m)->step;
  due_ = SnapshotReasons();
  due_.final = step >= t.total_steps();
  due_.evaluation = due_.final || (h.eval_every > 0 && step % h.eval_every == 0);
  due_.checkpoint = !due_.final && h.checkpoint_every > 0 && step % h.checkpoint_every == 0;
  if (due_.evaluation) {
    phase_ = Phase::kEval;
    eval_started_ = false;
  } else if (due_.checkpoint) {
    phase_ = Phase::kSnapshot;
  }
  return UnitKind::kTrain;
}

TrainWorkload::UnitKind TrainWorkload::Evaluate() {
  Trainer& t = *task_.trainer;
  if (!eval_started_) {
    t.StartEvaluation();
    eval_started_ = true;
  }
  absl::StatusOr<std::optional<EvalMetrics>> m = t.RunEvalChunk();
  if (!m.ok()) {
    End(TrainEnd::kFailed, m.status());
  } else if (m->has_value()) {
    task_.listener->OnEvaluated(**m);
    phase_ = Phase::kSnapshot;
  }
  return UnitKind::kEval;
}

TrainWorkload::UnitKind TrainWorkload::TakeSnapshot() {
  Trainer& t = *task_.trainer;
  // A pause or stop asked for meanwhile rides on this snapshot.
  due_.pause = due_.pause || pause_;
  due_.stop = due_.stop || stop_;
  absl::StatusOr<TrainSnapshot> snap = t.Snapshot();
  if (!snap.ok()) {
    End(TrainEnd::kFailed, snap.status());
    return UnitKind::kSnapshot;
  }
  const SnapshotReasons why = due_;
  task_.listener->OnSnapshot(*std::move(snap), why);
  due_ = SnapshotReasons();
  phase_ = Phase::kTrain;
  if (why.final) {
    End(TrainEnd::kCompleted, absl::OkStatus());
  } else if (why.stop) {
    End(TrainEnd::kStopped, absl::OkStatus());
  } else if (why.pause) {
    End(TrainEnd::kPaused, absl::OkStatus());
  }
  return UnitKind::kSnapshot;
}

void TrainWorkload::End(TrainEnd end, const absl::Status& status) {
  {
    absl::MutexLock lock(&id_mu_);
    active_job_.clear();
  }
  task_.trainer.reset();  // frees the device memory before the next task starts
  TrainListener* listener = task_.listener;
  task_ = TrainTask();
  listener->OnEnded(end, status);
}

void TrainWorkload::AbortAll(const absl::Status& status) {
  (void)status;
  if (task_.trainer) End(TrainEnd::kStopped, absl::OkStatus());
}

}  // namespace tandem

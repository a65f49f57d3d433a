// JobRunner: one run of one training job, from building its trainer to its outcome, on the
// job's own thread — which is also the job's I/O thread. The device work is the device loop's:
// the runner hands the trainer to the loop as a training task (DeviceLoop::StartTraining) and
// receives, keyed to this run, what the loop reports (a step done, an evaluation's loss, a host
// snapshot, the end). Run() reads as the lifecycle does:
//   start      dataset, tokenizer and trainer built here (off the loop), then handed over;
//   each step  recorded (store, watchers, metrics);
//   snapshot   a checkpoint written from it; for an evaluation, the model exported from it and
//              sampled as ordinary inference work on the same loop (EvalSampler), the result
//              recorded and, when it improved and the spec says so, deployed; at the last step,
//              the final checkpoint and deployment;
//   end        the outcome: succeeded, failed (why), cancelled, paused, or stopped (server
//              shutdown: the job stays RUNNING and resumes at the next start).
// The final state transition is the owner's (TrainManager), from the returned Outcome.
//
// The runner persists and reports through a JobLedger (the TrainManager) and publishes
// deployments into the ModelRegistry. Request() and WithdrawPause() may be called from any
// thread, the TrainListener methods are the loop's (they only queue); the rest runs on the job
// thread.
#ifndef TANDEM_SERVER_JOBS_JOB_RUNNER_H_
#define TANDEM_SERVER_JOBS_JOB_RUNNER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/core/device_loop.h"
#include "server/core/model_registry.h"
#include "server/jobs/job.h"
#include "server/jobs/job_metrics.h"
#include "server/jobs/time_budget.h"
#include "server/metrics/metrics.h"
#include "trainer/train_options.h"
#include "trainer/trainer.h"

namespace tandem {

// The job manager's side of a running job. Thread-safe.
class JobLedger {
 public:
  virtual ~JobLedger() = default;
  // Applies `change` to job `id` and commits it, with `event` (when set) appended to the job's
  // log and sent to its watchers, in one transaction.
  virtual absl::Status Update(const std::string& id, const std::function<void(Job&)>& change,
                              const std::optional<JobEvent>& event) = 0;
  // Commits steps' metrics (one transaction) and the job's `latest` (the last of them); sends
  // the last to the watchers if `notify`.
  virtual absl::Status RecordSteps(const std::string& id, const std::vector<StepRecord>& steps,
                                   bool notify) = 0;
  // Appends a log line to the job's events (and the server's log).
  virtual void Log(const std::string& id, const std::string& text) = 0;
  virtual Job Snapshot(const std::string& id) = 0;  // the job as it stands
};

struct JobRunnerOptions {
  TrainOptions train;       // resolved spec; job_id and device set
  std::string job_dir;      // --state_dir/jobs/<id>
  absl::Duration metrics_interval = absl::Milliseconds(500);  // Watch step metrics, at most
  // When the spec leaves chunk_rows unset: the chunk time to calibrate for (see TrainTask).
  absl::Duration train_slice = absl::Milliseconds(250);
  double peak_flops = 0;    // the MFU denominator (DevicePeakFlops); 0: measured
};

class JobRunner final : private TrainListener {
 public:
  enum class Control { kNone = 0, kPause, kCancel, kStop };
  struct Outcome {
    enum Kind { kSucceeded, kFailed, kCancelled, kPaused, kStopped } kind = kSucceeded;
    std::string error;  // kFailed
  };

  // None of the pointers is owned; all must outlive the runner. metrics may be null.
  JobRunner(JobRunnerOptions options, JobLedger* ledger, ModelRegistry* registry,
            DeviceLoop* loop, Metrics* metrics);
  ~JobRunner() override;

  // Trains until the job ends or a request stops it.
  Outcome Run();

  // Pause: at the next optimizer-step boundary, after a checkpoint. Cancel: at the next unit of
  // device work. Stop (server shutdown): like pause, but the job stays RUNNING in the store.
  void Request(Control c);
  // Withdraws a pause that has not taken effect yet; true if there was one.
  bool WithdrawPause();

 private:
  struct Calibrated {
    int rows;
    double seconds_per_row;
  };
  struct Evaluated {
    EvalMetrics m;
  };
  struct Snapped {
    TrainSnapshot snapshot;
    SnapshotReasons why;
  };
  struct Ended {
    TrainEnd end;
    absl::Status status;
  };
  using Event = std::variant<StepMetrics, Calibrated, Evaluated, Snapped, Ended>;

  // TrainListener (the loop's threads): queue and return.
  int Backlog() const override;
  void OnCalibrated(int chunk_rows, double seconds_per_row) override;
  void OnStep(const StepMetrics& m) override;
  void OnEvaluated(const EvalMetrics& m) override;
  void OnSnapshot(TrainSnapshot snapshot, const SnapshotReasons& why) override;
  void OnEnded(TrainEnd end, const absl::Status& status) override;
  void Queue(Event e);
  Event Next();
  // The steps queued right behind the one just taken (handled in one store transaction).
  std::vector<StepMetrics> TakeQueuedSteps();

  absl::Status Start();
  // Handles the loop's reports until the task ends; the outcome.
  Outcome Follow();
  // Records steps (store, watchers, metrics) in one transaction.
  absl::Status RecordSteps(const std::vector<StepMetrics>& steps);
  // The record of one step that took `took` seconds; the job's metrics.
  StepRecord Record(const StepMetrics& m, double took);
  // The calibrated chunk size goes into the stored spec, so every later run uses it.
  absl::Status RecordCalibration(const Calibrated& c);
  // A time-budgeted job: follows its TimeBudget's plan, re-plan and cut (each goes into the stored
  // spec, to the trainer and to the job's log).
  absl::Status FollowBudget(int64_t step);
  absl::Status StoreSteps(int64_t steps);  // into the stored spec
  absl::Status HandleSnapshot(const Snapped& s);
  absl::Status Checkpoint(const TrainSnapshot& snapshot);
  // The evaluation of the snapshot's step: samples from `exported` (its export), the record, and
  // a deployment of `exported` when it improved (if `may_deploy` and the spec says so).
  absl::Status RecordEvaluation(const TrainSnapshot& snapshot, const std::string& exported,
                                bool may_deploy, bool* deployed);
  // Exports the snapshot to a fresh folder under the job's directory.
  absl::StatusOr<std::string> Export(const TrainSnapshot& snapshot, const std::string& where);
  // Moves the export of the snapshot's step to the job's models and publishes it.
  absl::Status Deploy(const TrainSnapshot& snapshot, const std::string& exported);
  Outcome OutcomeOf(const Ended& e);

  const JobRunnerOptions options_;
  const std::string id_;
  JobLedger* const ledger_;
  ModelRegistry* const registry_;
  DeviceLoop* const loop_;
  Metrics* const metrics_;
  std::atomic<bool> pause_requested_{false};
  std::atomic<int> requested_{static_cast<int>(Control::kNone)};  // cancel or stop, once asked

  mutable absl::Mutex mu_;
  std::deque<Event> events_ ABSL_GUARDED_BY(mu_);

  // Job-thread state.
  JobSpec spec_;
  std::unique_ptr<Trainer> trainer_;  // until handed to the loop
  std::unique_ptr<JobMetrics> job_metrics_;  // from Start on
  std::optional<EvalMetrics> pending_eval_;  // the loss of an evaluation awaiting its snapshot
  int64_t total_steps_ = 0;
  std::optional<TimeBudget> budget_;  // a time-budgeted job's plan, from its first step
  int64_t stored_steps_ = 0;          // the steps its stored spec holds
  double best_loss_;
  absl::Time step_start_;
  absl::Time last_sent_ = absl::InfinitePast();
  double step_time_ema_ = 0;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_JOBS_JOB_RUNNER_H_

// JobRunner: one run of one training job on one device loop, from building its trainer to its
// outcome. Run() is the job thread's body and reads as the lifecycle does: start (dataset,
// tokenizer, trainer, restored checkpoint), train step after step (recording each step,
// evaluating, deploying and checkpointing when due, honouring pause / cancel / stop requests),
// then finish (final checkpoint and deployment). The final state transition is the owner's
// (TrainManager), from the returned Outcome.
//
// The runner persists and reports through a JobLedger (the TrainManager), publishes deployments
// into the ModelRegistry, and hands its micro-steps to the device loop. Request() may be called
// from any thread; everything else runs on the job thread.
#ifndef TANDEM_SERVER_JOBS_JOB_RUNNER_H_
#define TANDEM_SERVER_JOBS_JOB_RUNNER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/core/device_loop.h"
#include "server/core/model_registry.h"
#include "server/jobs/job.h"
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
  // Commits one step's metrics and the job's `latest`; sends them to the watchers if `notify`.
  virtual absl::Status RecordStep(const std::string& id, const StepRecord& m, bool notify) = 0;
  // Appends a log line to the job's events (and the server's log).
  virtual void Log(const std::string& id, const std::string& text) = 0;
  virtual Job Snapshot(const std::string& id) = 0;  // the job as it stands
};

struct JobRunnerOptions {
  TrainOptions train;       // resolved spec; job_id and device set
  std::string job_dir;      // --state_dir/jobs/<id>
  absl::Duration metrics_interval = absl::Milliseconds(500);  // Watch step metrics, at most
};

class JobRunner {
 public:
  enum class Control { kNone = 0, kPause, kCancel, kStop };
  struct Outcome {
    enum Kind { kSucceeded, kFailed, kCancelled, kPaused, kStopped } kind = kSucceeded;
    std::string error;  // kFailed
  };

  // None of the pointers is owned; all must outlive the runner. metrics may be null.
  JobRunner(JobRunnerOptions options, JobLedger* ledger, ModelRegistry* registry,
            DeviceLoop* loop, Metrics* metrics);
  ~JobRunner();

  // Trains until the job ends or a request stops it.
  Outcome Run();

  // Pause: at the next optimizer-step boundary, after a checkpoint. Cancel: at the next
  // micro-step. Stop (server shutdown): like pause, but the job stays RUNNING in the store.
  void Request(Control c) { request_.store(static_cast<int>(c)); }
  // Withdraws a pause that has not taken effect yet; true if there was one.
  bool WithdrawPause();

 private:
  absl::Status Start();
  // The step loop; returns the outcome that ended it (kSucceeded: every step done).
  Outcome Train();
  // Checks for a pending request: the outcome it calls for, or none to go on.
  std::optional<Outcome> HonourRequest();
  // One micro-step on the device loop (between its inference iterations). *done: whether the
  // loop took it (false once the loop is stopping).
  absl::Status RunMicroStep(std::optional<StepMetrics>* completed, bool* done);
  absl::Status RecordStep(const StepMetrics& m);
  absl::Status Evaluate(int64_t step, bool last);
  absl::Status Checkpoint();
  absl::Status Deploy(int64_t step);
  Outcome Finish();

  const JobRunnerOptions options_;
  const std::string id_;
  JobLedger* const ledger_;
  ModelRegistry* const registry_;
  DeviceLoop* const loop_;
  Metrics* const metrics_;
  std::atomic<int> request_{static_cast<int>(Control::kNone)};

  JobSpec spec_;
  std::unique_ptr<Trainer> trainer_;
  double best_loss_;
  int64_t last_checkpoint_ = 0;
  absl::Time step_start_;
  absl::Time last_sent_ = absl::InfinitePast();
  double step_time_ema_ = 0;
  prometheus::Histogram* step_seconds_ = nullptr;
  prometheus::Counter* busy_ = nullptr;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_JOBS_JOB_RUNNER_H_

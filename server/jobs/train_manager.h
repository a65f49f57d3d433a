// TrainManager: the lifecycle of training jobs — submission, the queue, one running job per
// device loop, pause / resume / cancel, watchers, and recovery after a restart. What one running
// job does (trainer, steps, evaluation, checkpoints, deployment) is its JobRunner's; the manager
// is the JobLedger the runners persist and report through. Proto-free and torch-free.
//
// States: QUEUED -> RUNNING <-> PAUSED -> SUCCEEDED | FAILED | CANCELLED. Resume puts a paused
// job back in the queue, where it starts again at once if a device is free. Jobs start by
// priority (higher first), then submission order; jobs that were RUNNING when the server stopped
// go first when it starts again, each restored from its newest good checkpoint.
//
// Where: the pool's Placement picks the device (one job per device, within its training-memory
// budget); a job whose estimate fits no device's budget is refused at submission
// (RESOURCE_EXHAUSTED), one that fits but finds the devices busy waits in the queue.
//
// Threads. Each running job has a thread of its own (the job thread) running its JobRunner,
// which hands one micro-step at a time to its device loop (DeviceLoop::TryPost) and waits for
// it: the loop runs it between inference iterations, so a stream waits at most one micro-step.
// Evaluation, checkpoint writes and model export run on the job thread while the loop keeps
// serving. Pause and cancel take effect at the next micro-step boundary (pause at the next
// optimizer-step boundary, where it writes a checkpoint).
//
// Durability: every state change, evaluation and step's metrics is in the job store (SQLite)
// before it is reported. Layout of --state_dir:
//   jobs.db                             the job store
//   jobs/<id>/work/                     the job's tokenizer
//   jobs/<id>/checkpoints/step-N/       checkpoints (newest keep_checkpoints kept)
//   jobs/<id>/models/step-N/            exported model directories (deployed from here)
// Thread-safe.
#ifndef TANDEM_SERVER_JOBS_TRAIN_MANAGER_H_
#define TANDEM_SERVER_JOBS_TRAIN_MANAGER_H_

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/core/model_registry.h"
#include "server/core/worker_pool.h"
#include "server/jobs/event_sink.h"
#include "server/jobs/job.h"
#include "server/jobs/job_runner.h"
#include "server/jobs/job_store.h"
#include "server/jobs/train_spec.h"
#include "server/metrics/metrics.h"

namespace tandem {

struct TrainManagerOptions {
  std::string state_dir;  // required
  std::string data_dir;   // datasets; empty: every submission fails FAILED_PRECONDITION
  int keep_checkpoints = 3;
  absl::Duration metrics_interval = absl::Milliseconds(500);  // Watch step metrics, at most
  absl::Duration train_slice = absl::Milliseconds(250);  // chunk time to calibrate for
  double peak_flops = 0;  // per device, the MFU denominator; 0: measured (DevicePeakFlops)
  bool start_jobs = true;  // false: recover and accept, but start nothing (tests)
};

class TrainManager final : public JobLedger {
 public:
  using Sink = std::shared_ptr<EventSink<JobEvent>>;

  // Opens the job store, re-publishes the models jobs deployed before a restart, re-queues the
  // jobs that were RUNNING, and starts what can run. The registry, pool and metrics (may be
  // null) must outlive the manager.
  static absl::StatusOr<std::unique_ptr<TrainManager>> Create(TrainManagerOptions options,
                                                              ModelRegistry* registry,
                                                              WorkerPool* pool, Metrics* metrics);
  ~TrainManager() override;  // Stop()s

  absl::StatusOr<Job> Submit(JobSpec spec);
  absl::StatusOr<Job> Get(const std::string& id, bool include_history);
  absl::StatusOr<std::vector<Job>> List(const std::vector<JobState>& states);
  // FAILED_PRECONDITION when the job's state does not allow it (e.g. cancelling a finished job).
  absl::StatusOr<Job> Cancel(const std::string& id);
  absl::StatusOr<Job> Pause(const std::string& id);
  absl::StatusOr<Job> Resume(const std::string& id);
  // Sends a snapshot of the job, its stored events when `replay`, then its events until it
  // reaches a final state (then the sink is finished OK) or the sink is cancelled. NOT_FOUND for
  // an unknown id (nothing sent).
  absl::Status Watch(const std::string& id, bool replay, Sink sink);

  // Running jobs stop at their next micro-step, writing a checkpoint when at a step boundary;
  // they stay RUNNING in the store, so the next start resumes them. Watchers are finished
  // UNAVAILABLE. Call before the worker pool stops. Idempotent.
  void Stop();

 private:
  struct Running {
    int device = 0;  // index of the device (and its loop) the job runs on
    std::unique_ptr<JobRunner> runner;
    std::thread thread;
  };

  TrainManager(TrainManagerOptions options, ModelRegistry* registry, WorkerPool* pool,
               Metrics* metrics, std::unique_ptr<JobStore> store);

  // Startup: deployments published again, RUNNING jobs queued first.
  absl::Status RecoverLocked(std::vector<Job> jobs) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts queued jobs while the placement finds them devices.
  void ScheduleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The queued job to start next (recovered first, then priority, then submission), or null.
  Job* NextQueuedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts the next queued job where the placement puts it, or fails it when its spec no longer
  // resolves. False when nothing more can start now (no job, no device for the next one, or the
  // store refused to mark it RUNNING).
  bool StartNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  TrainSpecContext SpecContext() const;
  // The job thread: runs the runner, then applies its outcome and frees the loop.
  void RunJob(const std::string& id);
  void EndRunLocked(const std::string& id, const JobRunner::Outcome& outcome)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // JobLedger, for the runners (the manager hands itself to each).
  absl::Status Update(const std::string& id, const std::function<void(Job&)>& change,
                      const std::optional<JobEvent>& event) override;
  absl::Status RecordSteps(const std::string& id, const std::vector<StepRecord>& steps,
                           bool notify) override;
  void Log(const std::string& id, const std::string& text) override;
  Job Snapshot(const std::string& id) override;

  // Writes `job` (and `event`, when set) to the store, then tells the watchers.
  absl::Status SaveLocked(const Job& job, const JobEvent* event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NotifyLocked(const std::string& id, const JobEvent& event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SetStateLocked(Job* job, JobState state, const std::string& error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LogLocked(const std::string& id, const std::string& text) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateJobGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job `id` while it may still change: NOT_FOUND for an unknown id, FAILED_PRECONDITION for
  // a job that has ended.
  absl::StatusOr<Job*> UnfinishedJobLocked(const std::string& id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Job> FindLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string JobDir(const std::string& id) const;

  const TrainManagerOptions options_;
  ModelRegistry* const registry_;
  WorkerPool* const pool_;
  Metrics* const metrics_;

  absl::Mutex mu_;
  std::unique_ptr<JobStore> store_ ABSL_PT_GUARDED_BY(mu_);
  // Every job, as in the store (without history).
  std::map<std::string, Job> jobs_ ABSL_GUARDED_BY(mu_);
  // Jobs that were RUNNING when the server last stopped: they start first.
  std::vector<std::string> recovered_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<Sink>> watchers_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Running>> running_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> finished_threads_ ABSL_GUARDED_BY(mu_);  // joined by Stop
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_JOBS_TRAIN_MANAGER_H_

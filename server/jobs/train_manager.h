// TrainManager: the lifecycle of training jobs — submission, the queue, one running job per
// device loop, pause / resume / cancel, evaluation, checkpoints, deployment into the registry,
// watchers, and recovery after a restart. Torch-free (the trainers sit behind trainer/trainer.h).
//
// States: QUEUED -> RUNNING <-> PAUSED -> SUCCEEDED | FAILED | CANCELLED. Resume puts a paused
// job back in the queue, where it starts again at once if a device is free. Jobs start by
// priority (higher first), then submission order; jobs that were RUNNING when the server stopped
// go first when it starts again, each restored from its newest good checkpoint.
//
// Threads. Each running job has a thread of its own (the job thread) that builds the trainer
// (dataset, tokenizer), then hands one micro-step at a time to its device loop (DeviceLoop::
// TryPost) and waits for it: the loop runs it between inference iterations, so a stream waits at
// most one micro-step. Evaluation, checkpoint writes and model export run on the job thread while
// the loop keeps serving (the job's training simply does not advance meanwhile). Pause and
// cancel take effect at the next micro-step boundary (pause at the next optimizer-step boundary,
// where it writes a checkpoint).
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

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/metrics/metrics.h"
#include "server/core/model_registry.h"
#include "server/jobs/event_sink.h"
#include "server/jobs/train_job_store.h"
#include "server/core/worker_pool.h"
#include "tandem/v1/training.pb.h"

namespace tandem {

struct TrainManagerOptions {
  std::string state_dir;  // required
  std::string data_dir;   // datasets; empty: every submission fails FAILED_PRECONDITION
  int keep_checkpoints = 3;
  int64_t memory_budget_bytes = 0;  // per job; <= 0 disables the check
  absl::Duration metrics_interval = absl::Milliseconds(500);  // Watch step metrics, at most
  bool start_jobs = true;  // false: recover and accept, but start nothing (tests)
};

class TrainManager {
 public:
  using EventSink = std::shared_ptr<tandem::EventSink<tandem::v1::TrainJobEvent>>;

  // Opens the job store, re-publishes the models jobs deployed before a restart, re-queues the
  // jobs that were RUNNING, and starts what can run. The registry, pool and metrics (may be
  // null) must outlive the manager.
  static absl::StatusOr<std::unique_ptr<TrainManager>> Create(TrainManagerOptions options,
                                                              ModelRegistry* registry,
                                                              WorkerPool* pool, Metrics* metrics);
  ~TrainManager();  // Stop()s

  absl::StatusOr<tandem::v1::TrainJob> Submit(tandem::v1::TrainJobSpec spec);
  absl::StatusOr<tandem::v1::TrainJob> Get(const std::string& id, bool include_history);
  absl::StatusOr<std::vector<tandem::v1::TrainJob>> List(
      const std::vector<tandem::v1::TrainJobState>& states);
  // FAILED_PRECONDITION when the job's state does not allow it (e.g. cancelling a finished job).
  absl::StatusOr<tandem::v1::TrainJob> Cancel(const std::string& id);
  absl::StatusOr<tandem::v1::TrainJob> Pause(const std::string& id);
  absl::StatusOr<tandem::v1::TrainJob> Resume(const std::string& id);
  // Sends a snapshot of the job, its stored events when `replay`, then its events until it
  // reaches a final state (then the sink is finished OK) or the sink is cancelled. NOT_FOUND for
  // an unknown id (nothing sent).
  absl::Status Watch(const std::string& id, bool replay, EventSink sink);

  // Running jobs stop at their next micro-step, writing a checkpoint when at a step boundary;
  // they stay RUNNING in the store, so the next start resumes them. Watchers are finished
  // UNAVAILABLE. Call before the worker pool stops. Idempotent.
  void Stop();

 private:
  struct Running;

  TrainManager(TrainManagerOptions options, ModelRegistry* registry, WorkerPool* pool,
               Metrics* metrics, std::unique_ptr<TrainJobStore> store);

  // Starts queued jobs on idle device loops.
  void ScheduleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RunJob(Running* run);
  // Writes `job` (and `event`, when set) to the store, then tells the watchers.
  absl::Status SaveLocked(const tandem::v1::TrainJob& job, const tandem::v1::TrainJobEvent* event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NotifyLocked(const std::string& id, const tandem::v1::TrainJobEvent& event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SetStateLocked(tandem::v1::TrainJob* job, tandem::v1::TrainJobState state,
                              const std::string& error) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LogLocked(const std::string& id, const std::string& text) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateJobGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job `id` while it may still change: NOT_FOUND for an unknown id, FAILED_PRECONDITION for
  // a job that has ended.
  absl::StatusOr<tandem::v1::TrainJob*> UnfinishedJobLocked(const std::string& id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string JobDir(const std::string& id) const;

  const TrainManagerOptions options_;
  ModelRegistry* const registry_;
  WorkerPool* const pool_;
  Metrics* const metrics_;

  absl::Mutex mu_;
  std::unique_ptr<TrainJobStore> store_ ABSL_PT_GUARDED_BY(mu_);
  // Every job, as in the store (without history).
  std::map<std::string, tandem::v1::TrainJob> jobs_ ABSL_GUARDED_BY(mu_);
  // Jobs that were RUNNING when the server last stopped: they start first.
  std::vector<std::string> recovered_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<EventSink>> watchers_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Running>> running_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> loop_busy_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> finished_threads_ ABSL_GUARDED_BY(mu_);  // joined by Stop
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_JOBS_TRAIN_MANAGER_H_

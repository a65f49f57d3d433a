// TrainWorkload: training as a workload of the device loop, beside text and image. It holds the
// device's training task (one at most: a job's Trainer, handed over by the job layer) and cuts
// its work into units the loop schedules (SchedulerPolicy) and runs on its executor:
//   - a chunk of the current micro-step (Trainer::RunChunk); a completed step is reported;
//   - after a step that calls for an evaluation, its held-out loss chunk by chunk;
//   - after a step that calls for an evaluation, a checkpoint, the end, a pause or a stop: a host
//     copy (Trainer::Snapshot), reported for the job layer to write, export, deploy or sample on
//     its own threads while training goes on.
// Pause and stop take effect at the next step boundary (after a snapshot), cancel at the next
// unit. Results go to the task's TrainListener, keyed by nothing but the task: the job layer
// gives each task its own listener.
//
// Threads: RunUnit runs on the executor, one unit at a time; Start, HasWork, job_id and AbortAll
// run on the loop thread and only while no unit is in flight (the executor's hand-off orders the
// two); Apply may run any time (its requests are atomics the next unit reads). The listener is
// called from RunUnit (executor thread) and from AbortAll (loop thread); it must not block.
#ifndef TANDEM_SERVER_CORE_TRAIN_WORKLOAD_H_
#define TANDEM_SERVER_CORE_TRAIN_WORKLOAD_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/synchronization/mutex.h"
#include "server/core/workload.h"
#include "trainer/trainer.h"

namespace tandem {

// Why a snapshot was taken (several at once, e.g. an evaluation at a checkpoint step).
struct SnapshotReasons {
  bool evaluation = false;  // sample from it (and deploy it, if it improved)
  bool checkpoint = false;
  bool final = false;       // the last step: checkpoint and deploy
  bool pause = false;
  bool stop = false;        // the server is stopping: checkpoint, stay RUNNING
};

enum class TrainEnd { kCompleted, kPaused, kStopped, kCancelled, kFailed };

// Training waits (HasWork is false) while its listener has this many reports not yet handled:
// the device never runs ahead of what the job layer records by more than a few steps.
inline constexpr int kMaxListenerBacklog = 8;

class TrainListener {
 public:
  virtual ~TrainListener() = default;
  // Reports received and not yet handled (thread-safe). When it falls below
  // kMaxListenerBacklog again the listener wakes the loop (DeviceLoop::Post).
  virtual int Backlog() const = 0;
  // The chunk size chosen before the first chunk (TrainTask::calibrate_slice), with the
  // measured time of one row.
  virtual void OnCalibrated(int chunk_rows, double seconds_per_row) = 0;
  virtual void OnStep(const StepMetrics& m) = 0;
  // The held-out loss of an evaluation (samples follow from the snapshot after it).
  virtual void OnEvaluated(const EvalMetrics& m) = 0;
  virtual void OnSnapshot(TrainSnapshot snapshot, const SnapshotReasons& why) = 0;
  // The task has left the device (its trainer already destroyed). `status` for kFailed.
  virtual void OnEnded(TrainEnd end, const absl::Status& status) = 0;
};

struct TrainTask {
  std::string job_id;
  std::unique_ptr<Trainer> trainer;
  TrainListener* listener = nullptr;  // not owned; outlives the task's OnEnded
  // > 0: before the first chunk, time a probe and choose chunk_rows so that a chunk takes about
  // this long (the run's chunk size is then fixed). 0: the trainer's chunk_rows as it is.
  absl::Duration calibrate_slice = absl::ZeroDuration();
};

class TrainWorkload final : public Workload {
 public:
  enum class Control { kPause, kResume, kCancel, kStop };
  // What a unit was, for the loop's accounting.
  enum class UnitKind { kTrain, kEval, kSnapshot };

  TrainWorkload() = default;

  const char* name() const override { return "train"; }
  // A task is here and has a unit to run.
  bool HasWork() const override;
  // Runs the next unit (executor thread); returns what it was.
  UnitKind RunUnit();
  void RunIteration() override { RunUnit(); }
  // Ends the task (OnEnded kStopped) without a snapshot: the loop is stopping.
  void AbortAll(const absl::Status& status) override;

  // FAILED_PRECONDITION when a task is here already (the placement allows one per device).
  absl::Status Start(TrainTask task);
  // For the task of `job_id` (ignored for another): pause / stop at the next step boundary,
  // resume (withdraws a pause not yet taken), cancel at the next unit.
  void Apply(const std::string& job_id, Control control);
  std::string job_id() const;
  // For the task of `job_id`: the schedule's end moves to `steps` at the next unit
  // (Trainer::SetTotalSteps). Any thread.
  void SetTotalSteps(const std::string& job_id, int64_t steps);

 private:
  enum class Phase { kCalibrate, kTrain, kEval, kSnapshot };
  UnitKind Calibrate();
  UnitKind Train();
  UnitKind Evaluate();
  UnitKind TakeSnapshot();
  void End(TrainEnd end, const absl::Status& status);

  TrainTask task_;
  Phase phase_ = Phase::kTrain;
  bool eval_started_ = false;
  SnapshotReasons due_;  // what the next snapshot is for
  std::atomic<bool> pause_{false};
  std::atomic<bool> stop_{false};
  std::atomic<bool> cancel_{false};
  std::atomic<int64_t> total_steps_{0};  // 0: no change asked
  absl::Mutex id_mu_;
  std::string active_job_ ABSL_GUARDED_BY(id_mu_);  // the task's job, for Apply
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_TRAIN_WORKLOAD_H_

// DeviceLoop: the one place model work runs on one device (the CPU, or one CUDA GPU). It owns
// the device's workloads — text generation, image generation, training — and interleaves them:
// inference first, training in what inference leaves, and training's guaranteed minimum share
// when inference would take everything (SchedulerPolicy). Other threads hand work in through
// Submit / StartTraining / ControlTraining / Post, which never block on model work.
//
// Threads: the loop thread runs inference iterations (an LLM decode step with chunked prefill,
// a batched denoising step) and decides; training units (TrainWorkload) run on the loop's
// executor, a second thread of background priority (SCHED_IDLE on the CPU, a low-priority CUDA
// stream), so inference that arrives while a unit runs starts at once; the unit then waits at its
// next yield point (a layer boundary, models/torch/yield_point.h) until the loop stops running
// inference. When training's share is owed the loop waits for the unit instead. Models and the
// workloads need no locks: each instance is used by one of the two threads at a time.
//
// Metrics (by device): device seconds by work (text, image, train, eval, idle), the preemption
// latency (inference work arriving while training holds the device — the loop has no inference
// to run and waits on, or itself runs, a training unit — to its first operation; work arriving
// while the loop runs inference waits for that, not for training), training's share, chunk time.
#ifndef TANDEM_SERVER_CORE_DEVICE_LOOP_H_
#define TANDEM_SERVER_CORE_DEVICE_LOOP_H_

#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "models/torch/yield_point.h"
#include "server/core/executor.h"
#include "server/core/image_workload.h"
#include "server/core/model_registry.h"
#include "server/core/scheduler.h"
#include "server/core/text_workload.h"
#include "server/core/train_workload.h"
#include "server/metrics/metrics.h"

namespace tandem {

// Where training units run.
enum class TrainExecution {
  kBackground,  // the executor thread at background priority (the default)
  kNormal,      // the executor thread at normal priority
  kInline,      // on the loop thread itself, between inference iterations (cooperative)
};

struct DeviceLoopOptions {
  std::string device = "cpu";
  int device_index = 0;  // the device's index in the registry's devices: which instances it runs
  int prefill_token_budget = 512;  // see TextWorkloadOptions
  SchedulerOptions scheduler;
  TrainExecution train_execution = TrainExecution::kBackground;
};

class DeviceLoop {
 public:
  // Starts the threads. The models' instances for this device are the registry's (built when
  // each was published). The registry must outlive the loop; metrics may be null.
  static absl::StatusOr<std::unique_ptr<DeviceLoop>> Create(DeviceLoopOptions options,
                                                            ModelRegistry* registry,
                                                            Metrics* metrics);
  ~DeviceLoop();  // Stop()s

  // Hands a request to the loop. Its stream is finished by the loop, whatever happens.
  void Submit(std::unique_ptr<TextRequest> request);
  void Submit(std::unique_ptr<ImageRequest> request);
  // Hands a training task to the loop; its listener hears everything from here on, its OnEnded
  // included (kFailed when the device already trains, kStopped when the loop is stopping).
  void StartTraining(TrainTask task);
  void ControlTraining(const std::string& job_id, TrainWorkload::Control control);
  // Moves the end of the schedule of `job_id`'s task (TrainWorkload::SetTotalSteps).
  void SetTrainingSteps(const std::string& job_id, int64_t steps);
  // Runs `fn` on the loop thread before the next iteration.
  void Post(absl::AnyInvocable<void()> fn);
  const std::string& device() const { return options_.device; }
  int device_index() const { return options_.device_index; }

  // Ends every request still here with UNAVAILABLE, ends the training task (OnEnded kStopped)
  // and joins the threads. Idempotent.
  void Stop();

 private:
  // Something posted: when it arrived and whether training held the device then.
  struct Posted {
    absl::AnyInvocable<void()> fn;
    absl::Time arrived;
    bool during_training = false;
  };

  DeviceLoop(DeviceLoopOptions options, ModelRegistry* registry, Metrics* metrics);
  void SetUpMetrics();
  void Run();
  // Sleeps until work arrives when nothing can start; takes the inbox. False when stopping.
  bool Wait(std::deque<Posted>* batch);
  // One decision of the policy, carried out.
  void Step();
  void RunInference();
  void ReleaseTeamIfTrainingAlone();
  // `owed`: the loop will wait for the unit (training's share is owed), so it runs in the
  // foreground class rather than yield to whatever else the machine runs.
  void DispatchTrainUnit(bool owed);
  void WaitForTrainUnit();
  // The executor finished a unit (under mu_): account for it.
  void TrainUnitDone() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool InferenceRunnable() const;
  template <typename Request, typename Workload>
  void Enqueue(std::unique_ptr<Request> request, Workload* workload);
  void Push(absl::AnyInvocable<void()> fn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const DeviceLoopOptions options_;
  ModelRegistry* const registry_;
  Metrics* const metrics_;

  absl::Mutex mu_;
  std::deque<Posted> inbox_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool unit_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool unit_done_ ABSL_GUARDED_BY(mu_) = false;
  // Training holds the device: the loop has no inference to run and waits for the unit in
  // flight (or runs it inline). What arrives now counts in the preemption latency.
  bool training_holds_ ABSL_GUARDED_BY(mu_) = false;
  // Written by the executor's unit, read by the loop after unit_done_.
  TrainWorkload::UnitKind unit_kind_ = TrainWorkload::UnitKind::kTrain;
  absl::Duration unit_took_;  // excluding the time it waited at yield points
  // Closed while the loop runs inference: the executor's unit waits at its next yield point.
  TrainGate gate_;

  // Loop-thread state.
  std::unique_ptr<TextWorkload> text_;
  std::unique_ptr<ImageWorkload> image_;
  std::unique_ptr<TrainWorkload> train_;
  // The inference workloads with the counter of their device time, in iteration order.
  std::vector<std::pair<Workload*, prometheus::Counter*>> inference_;
  SchedulerPolicy policy_;
  std::vector<absl::Time> arrivals_;  // inference work that arrived while training held the device
  std::unique_ptr<Executor> executor_;
  prometheus::Counter* busy_train_ = nullptr;
  prometheus::Counter* busy_eval_ = nullptr;
  prometheus::Counter* busy_idle_ = nullptr;
  prometheus::Histogram* chunk_seconds_ = nullptr;
  prometheus::Histogram* preemption_seconds_ = nullptr;
  prometheus::Gauge* train_share_ = nullptr;
  std::thread thread_;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_DEVICE_LOOP_H_

// DeviceLoop: the single thread that owns one device (the CPU, or one CUDA GPU) and every model
// instance on it. All model work for that device runs here, so models need no locks: other
// threads hand work in through Submit/Post, which never block on model work.
//
// Each pass of the loop runs the posted closures (among them at most one training micro-step per
// running job, see TrainManager), then one iteration of each workload that has work (an LLM
// decode iteration, a batched denoising step), and sleeps only when there is nothing to do.
#ifndef TANDEM_SERVER_CORE_DEVICE_LOOP_H_
#define TANDEM_SERVER_CORE_DEVICE_LOOP_H_

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/core/image_workload.h"
#include "server/core/model_registry.h"
#include "server/core/text_workload.h"
#include "server/metrics/metrics.h"

namespace tandem {

struct DeviceLoopOptions {
  std::string device = "cpu";
  int device_index = 0;  // the device's index in the registry's devices: which instances it runs
  int prefill_token_budget = 512;  // see TextWorkloadOptions
};

class DeviceLoop {
 public:
  // Starts the thread. The models' instances for this device are the registry's (built when
  // each was published). The registry must outlive the loop; metrics may be null.
  static absl::StatusOr<std::unique_ptr<DeviceLoop>> Create(DeviceLoopOptions options,
                                                            ModelRegistry* registry,
                                                            Metrics* metrics);
  ~DeviceLoop();  // Stop()s

  // Hands a request to the loop. Its stream is finished by the loop, whatever happens.
  void Submit(std::unique_ptr<TextRequest> request);
  void Submit(std::unique_ptr<ImageRequest> request);
  // Runs `fn` on the loop thread before the next iteration.
  void Post(absl::AnyInvocable<void()> fn);
  // Like Post, but refuses (returns false, `fn` not run) once the loop is stopping. Training
  // runs each micro-step through this: one posted micro-step per pass of the loop, between
  // inference iterations, so a stream waits at most one micro-step.
  bool TryPost(absl::AnyInvocable<void()>& fn);
  const std::string& device() const { return options_.device; }

  // Ends every request still here with UNAVAILABLE and joins the thread. Idempotent.
  void Stop();

 private:
  DeviceLoop(DeviceLoopOptions options, ModelRegistry* registry, Metrics* metrics);
  void Run();
  bool HasWork() const;
  // Hands the request to `workload` on the loop thread (or finishes it if the loop is stopping).
  template <typename Request, typename Workload>
  void Enqueue(std::unique_ptr<Request> request, Workload* workload);

  const DeviceLoopOptions options_;
  ModelRegistry* const registry_;
  Metrics* const metrics_;

  absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> inbox_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // Loop-thread state.
  std::unique_ptr<TextWorkload> text_;
  std::unique_ptr<ImageWorkload> image_;
  // Every workload with the counter of its device time, in the order an iteration runs them.
  std::vector<std::pair<Workload*, prometheus::Counter*>> workloads_;
  std::thread thread_;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_DEVICE_LOOP_H_

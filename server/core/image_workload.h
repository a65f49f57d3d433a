// ImageWorkload: step-level batching of text-to-image diffusion on one device. Every
// RunIteration drops cancelled requests, starts waiting ones while the model has free sample
// slots, then runs ONE batched denoising step over every active sample of each model instance,
// whatever step each is at. After each step a request gets ImageProgress (with a small preview
// every preview_every steps); when its last step is done, one ImageOutput per sample, then
// Finished.
//
// Owned by a DeviceLoop; every method runs on that loop's thread (not thread-safe).
#ifndef TANDEM_SERVER_CORE_IMAGE_WORKLOAD_H_
#define TANDEM_SERVER_CORE_IMAGE_WORKLOAD_H_

#include <memory>
#include <string>
#include <vector>

#include "models/image_model.h"
#include "server/core/request.h"
#include "server/core/workload.h"
#include "server/metrics/gauge_set.h"
#include "server/metrics/metrics.h"

namespace tandem {

class ImageWorkload final : public Workload {
 public:
  ImageWorkload(std::string device, int device_index, Metrics* metrics);
  ~ImageWorkload() override;

  void Admit(std::unique_ptr<ImageRequest> request);
  const char* name() const override { return "image"; }
  bool HasWork() const override { return !waiting_.empty() || !active_.empty(); }
  void RunIteration() override;
  void AbortAll(const absl::Status& status) override;

 private:
  struct Job;

  void DropCancelled();
  void StartWaiting();
  // Starts the head of the queue; false when it must wait for free samples.
  bool StartHead();
  void StepActive();
  void Progress(Job& job);
  void Complete(Job& job);
  // Frees the samples and ends the request with `status` (once).
  void Release(Job& job, const absl::Status& status);
  void UpdateGauges();

  std::string device_;
  const int device_index_;  // the device's index among the registry's devices
  Metrics* metrics_;
  RequestQueue<ImageRequest> waiting_;
  RunningSet<Job> active_;
  prometheus::Histogram* step_seconds_ = nullptr;
  prometheus::Histogram* batch_size_ = nullptr;
  GaugeSet waiting_gauges_, running_gauges_, slots_gauges_;  // by model
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_IMAGE_WORKLOAD_H_

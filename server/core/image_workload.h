// ImageWorkload: step-level batching of text-to-image diffusion on one device. Every
// RunIteration drops cancelled requests, starts waiting ones while the model has free sample
// slots, then runs ONE batched denoising step over every active sample of each model instance,
// whatever step each is at. After each step a request gets ImageProgress (with a small preview
// every preview_every steps); when its last step is done, one Image per sample, then Finished.
//
// Owned by a DeviceLoop; every method runs on that loop's thread (not thread-safe).
#ifndef TANDEM_SERVER_CORE_IMAGE_WORKLOAD_H_
#define TANDEM_SERVER_CORE_IMAGE_WORKLOAD_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "models/image_model.h"
#include "server/metrics/metrics.h"
#include "server/core/model_registry.h"
#include "server/core/response_stream.h"

namespace tandem {

// One validated image request, ready for a device.
struct ImageRequest {
  std::string id;
  std::shared_ptr<const ModelEntry> model;
  ImageSampleSpec spec;  // seed of image i is spec.seed + i
  int num_images = 1;
  int preview_every = 0;
  int prompt_tokens = 0;
  int priority = 0;
  absl::Time accepted;
  std::shared_ptr<ResponseStream> stream;
  std::function<void()> on_done;  // called once when the request leaves the device
};

using ImageInstanceFn =
    std::function<absl::StatusOr<std::shared_ptr<ImageModel>>(const ModelEntry&)>;

class ImageWorkload {
 public:
  ImageWorkload(std::string device, ImageInstanceFn instances, Metrics* metrics);
  ~ImageWorkload();

  void Admit(std::unique_ptr<ImageRequest> request);
  bool HasWork() const { return !waiting_.empty() || !active_.empty(); }
  void RunIteration();
  void AbortAll(const absl::Status& status);

 private:
  struct Job;

  void DropCancelled();
  void StartWaiting();
  void StepActive();
  void Progress(Job& job);
  void Complete(Job& job);
  void Fail(Job& job, const absl::Status& status);
  void Release(Job& job);

  std::string device_;
  ImageInstanceFn instances_;
  Metrics* metrics_;
  std::deque<std::unique_ptr<ImageRequest>> waiting_;
  std::vector<std::unique_ptr<Job>> active_;
  prometheus::Histogram* step_seconds_ = nullptr;
  prometheus::Histogram* batch_size_ = nullptr;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_IMAGE_WORKLOAD_H_

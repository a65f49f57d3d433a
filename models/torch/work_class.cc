#include "models/torch/work_class.h"

#include <pthread.h>
#include <sched.h>

#include <cerrno>
#include <cstring>

#include <torch/torch.h>

#if defined(TANDEM_WITH_CUDA)
#include <c10/cuda/CUDAStream.h>
#endif

#include "absl/strings/str_cat.h"

namespace tandem {
namespace {

absl::Status SetCpuPolicy(WorkClass work) {
  sched_param param{};
  param.sched_priority = 0;
  const int policy = work == WorkClass::kBackground ? SCHED_IDLE : SCHED_OTHER;
  const int rc = pthread_setschedparam(pthread_self(), policy, &param);
  if (rc != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot set the thread's scheduling policy: ", std::strerror(rc)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SetThreadWorkClass(WorkClass work, const std::string& device) {
  if (absl::Status s = SetCpuPolicy(work); !s.ok()) return s;
  if (device.rfind("cuda", 0) != 0) return absl::OkStatus();
#if defined(TANDEM_WITH_CUDA)
  try {
    const torch::Device d(device);
    c10::cuda::setCurrentCUDAStream(
        c10::cuda::getStreamFromPool(/*isHighPriority=*/work == WorkClass::kForeground,
                                     d.index()));
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("cannot set a CUDA stream on ", device, ": ", e.what_without_backtrace()));
  }
#endif
  return absl::OkStatus();
}

}  // namespace tandem

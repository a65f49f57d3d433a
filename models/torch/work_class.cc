#include "models/torch/work_class.h"

#include <omp.h>
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

int SetOwnPolicy(int policy) {
  sched_param param{};
  param.sched_priority = 0;
  return pthread_setschedparam(pthread_self(), policy, &param);
}

// The calling thread and the OpenMP team it leads (LibTorch's and OpenBLAS's intra-op threads):
// each thread of a parallel region sets its own policy.
absl::Status SetCpuPolicy(WorkClass work) {
  const int policy = work == WorkClass::kBackground ? SCHED_IDLE : SCHED_OTHER;
  int rc = SetOwnPolicy(policy);
  if (rc == 0) {
    int team_rc = 0;
#pragma omp parallel reduction(| : team_rc)
    team_rc |= SetOwnPolicy(policy);
    rc = team_rc;
  }
  if (rc != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot set the threads' scheduling policy: ", std::strerror(rc)));
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

void ReleaseThreadTeam() {
  // libgomp frees the calling thread's pool (a no-op when it has none); the OpenMP 5.0 routine,
  // so LLVM's runtime does the same.
  omp_pause_resource(omp_pause_soft, omp_get_initial_device());
}

}  // namespace tandem

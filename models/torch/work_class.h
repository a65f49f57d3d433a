// Work classes: how the device's scheduler tells the hardware which work may wait. A device loop
// runs online inference on its own thread; training runs on a separate executor thread marked
// background, so that inference preempts it at once:
//   - on the CPU, a background thread and the OpenMP team it leads (LibTorch's and OpenBLAS's
//     intra-op threads) run under SCHED_IDLE: the kernel gives them a core only when no normal
//     thread wants one;
//   - on CUDA, the thread's current stream for the device is a low-priority stream (inference
//     keeps the default priority), so the GPU schedules inference kernels first.
// Torch-free header.
#ifndef TANDEM_MODELS_TORCH_WORK_CLASS_H_
#define TANDEM_MODELS_TORCH_WORK_CLASS_H_

#include <string>

#include "absl/status/status.h"

namespace tandem {

enum class WorkClass {
  kForeground,  // online inference
  kBackground,  // training: runs in what the foreground leaves
};

// Applies `work` to the calling thread for `device` ("cpu", "cuda:N"): the CPU policy to the
// thread and its OpenMP team; the CUDA stream as the thread's current stream for that device.
// Cheap enough to switch per unit of work. An error (e.g. a policy refused) is returned.
absl::Status SetThreadWorkClass(WorkClass work, const std::string& device);

// Ends the calling thread's OpenMP team: its idle worker threads exit, and the thread's next
// parallel region starts a new team. A thread calls it before it waits while another thread's
// team works (the device loop while training runs on the executor, the executor between units):
// libgomp spin-waits between parallel regions only while the threads it manages do not outnumber
// the cores, and sleeps (a futex wake-up per region) otherwise. Not from inside a parallel region.
void ReleaseThreadTeam();

}  // namespace tandem

#endif  // TANDEM_MODELS_TORCH_WORK_CLASS_H_

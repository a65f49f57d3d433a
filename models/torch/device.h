// Compute devices as LibTorch sees them, behind a torch-free header.
#ifndef TANDEM_MODELS_TORCH_DEVICE_H_
#define TANDEM_MODELS_TORCH_DEVICE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tandem {

// Number of CUDA devices LibTorch can use (0 on a CPU-only build or machine).
int CudaDeviceCount();

// Parses --devices: "auto" (every CUDA device, else "cpu"), "cpu", or "cuda:0,cuda:1,...".
// INVALID_ARGUMENT for a malformed name, FAILED_PRECONDITION for a CUDA device that is absent.
absl::StatusOr<std::vector<std::string>> ResolveDevices(const std::string& flag);

// The LibTorch version compiled against ("1.13.0"), and the CUDA runtime version of a CUDA
// LibTorch ("11.7"), "none" for a CPU-only build.
std::string TorchVersion();
std::string CudaRuntimeVersion();

// Sets LibTorch's intra-op threads (<= 0: all cores) and returns the number in effect.
int SetComputeThreads(int threads);

// A device's memory now, in bytes: the CPU's physical memory and what the kernel counts as
// available (MemAvailable); a CUDA device's total and free memory (cudaMemGetInfo, on a CUDA
// LibTorch). UNAVAILABLE when it cannot be read.
struct DeviceMemory {
  int64_t total = 0;
  int64_t free = 0;
};
absl::StatusOr<DeviceMemory> ReadDeviceMemory(const std::string& device);

}  // namespace tandem

#endif  // TANDEM_MODELS_TORCH_DEVICE_H_

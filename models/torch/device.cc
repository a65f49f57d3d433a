#include "models/torch/device.h"

#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/torch.h>
#include <torch/version.h>

#if defined(TANDEM_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace tandem {

int CudaDeviceCount() {
  try {
    return static_cast<int>(torch::cuda::device_count());
  } catch (const c10::Error&) {
    return 0;  // a broken driver counts as no CUDA device
  }
}

std::string TorchVersion() { return TORCH_VERSION; }

std::string CudaRuntimeVersion() {
  try {
    // Registered only when LibTorch's CUDA library is linked; throws otherwise.
    const int64_t v = at::detail::getCUDAHooks().versionCUDART();
    return absl::StrCat(v / 1000, ".", (v % 1000) / 10);
  } catch (const c10::Error&) {
    return "none";
  }
}

absl::StatusOr<std::vector<std::string>> ResolveDevices(const std::string& flag) {
  const int cuda_count = CudaDeviceCount();
  const absl::string_view trimmed = absl::StripAsciiWhitespace(flag);
  if (trimmed == "auto") {
    if (cuda_count == 0) return std::vector<std::string>{"cpu"};
    std::vector<std::string> all;
    for (int i = 0; i < cuda_count; ++i) all.push_back(absl::StrCat("cuda:", i));
    return all;
  }
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(trimmed, ',')) {
    part = absl::StripAsciiWhitespace(part);
    std::string name;
    if (part == "cpu") {
      name = "cpu";
    } else if (absl::ConsumePrefix(&part, "cuda")) {
      int index = 0;
      // "cuda" alone means cuda:0; otherwise ":" and a decimal index.
      if (!part.empty()) {
        if (!absl::ConsumePrefix(&part, ":") || part.empty() ||
            !std::all_of(part.begin(), part.end(), absl::ascii_isdigit) ||
            !absl::SimpleAtoi(part, &index)) {
          return absl::InvalidArgumentError(
              absl::StrCat("--devices: malformed CUDA device in \"", flag, "\" (want cuda:N)"));
        }
      }
      if (index >= cuda_count) {
        return absl::FailedPreconditionError(absl::StrCat("--devices: cuda:", index,
                                                          " is absent: LibTorch sees ", cuda_count,
                                                          " CUDA device(s)"));
      }
      name = absl::StrCat("cuda:", index);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--devices: unknown device \"", part,
                                                     "\" in \"", flag,
                                                     "\" (want auto, cpu, or a list of cuda:N)"));
    }
    if (std::find(out.begin(), out.end(), name) != out.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--devices: ", name, " is listed twice in \"", flag, "\""));
    }
    out.push_back(std::move(name));
  }
  return out;
}

int SetComputeThreads(int threads) {
  try {
    if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    at::set_num_threads(threads);
    return at::get_num_threads();
  } catch (const c10::Error&) {
    try {
      return at::get_num_threads();
    } catch (const c10::Error&) {
      return 1;
    }
  }
}

absl::StatusOr<DeviceMemory> ReadDeviceMemory(const std::string& device) {
  DeviceMemory m;
  if (device == "cpu") {
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page <= 0) return absl::UnavailableError("cannot read the memory size");
    m.total = static_cast<int64_t>(pages) * page;
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    int64_t kib = 0;
    std::string unit;
    while (meminfo >> key >> kib >> unit) {
      if (key == "MemAvailable:") m.free = kib * 1024;
    }
    if (m.free == 0) m.free = m.total;
    return m;
  }
#if defined(TANDEM_WITH_CUDA)
  try {
    const torch::Device d(device);
    c10::cuda::CUDAGuard guard(d.index());
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) {
      return absl::UnavailableError(absl::StrCat("cudaMemGetInfo failed on ", device));
    }
    m.total = static_cast<int64_t>(total);
    m.free = static_cast<int64_t>(free);
    return m;
  } catch (const c10::Error& e) {
    return absl::UnavailableError(absl::StrCat(device, ": ", e.what_without_backtrace()));
  }
#else
  return absl::UnavailableError(absl::StrCat("no CUDA in this build: ", device));
#endif
}

}  // namespace tandem

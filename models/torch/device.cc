#include "models/torch/device.h"

#include <torch/torch.h>

#include <algorithm>
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

}  // namespace tandem

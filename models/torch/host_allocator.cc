#include "models/torch/host_allocator.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace tandem {

absl::Status KeepFreedHostMemory(int64_t mib) {
  if (mib < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the freed memory to keep must be >= 0 MiB, not ", mib));
  }
  if (mib == 0) return absl::OkStatus();
#if defined(__GLIBC__)
  // glibc refuses an mmap threshold above half its largest arena heap (32 MiB on 64-bit):
  // blocks up to that come from the arenas, larger ones are still mapped and unmapped.
  constexpr int kMaxMmapThreshold = 32 << 20;
  const int keep = static_cast<int>(std::min<int64_t>(mib, 2047) << 20);
  const struct {
    int param;
    int value;
    const char* name;
  } settings[] = {
      {M_MMAP_THRESHOLD, std::min(keep, kMaxMmapThreshold), "M_MMAP_THRESHOLD"},
      {M_TRIM_THRESHOLD, keep, "M_TRIM_THRESHOLD"},
      {M_TOP_PAD, std::min(keep, 256 << 20), "M_TOP_PAD"},
  };
  for (const auto& s : settings) {
    if (mallopt(s.param, s.value) != 1) {
      return absl::InternalError(absl::StrCat("mallopt(", s.name, ", ", s.value, ") failed"));
    }
  }
#endif
  return absl::OkStatus();
}

}  // namespace tandem

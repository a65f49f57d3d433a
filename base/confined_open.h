// Files opened only beneath a root folder, checked by the kernel at the moment of opening: the
// path is resolved from a descriptor of the root with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_MAGICLINKS), so "..", an absolute path, or a symlink leading out — also one swapped
// in after an earlier check — fails the open itself. On kernels without openat2 (before 5.6) the
// components are walked with O_NOFOLLOW: every symlink is refused. Thread-safe.
//
// Status codes: NOT_FOUND when the file does not exist, PERMISSION_DENIED when it leads outside
// the root, INVALID_ARGUMENT for a path that is not under the root as written, INTERNAL for other
// errors (with the errno's text).
#ifndef TANDEM_BASE_CONFINED_OPEN_H_
#define TANDEM_BASE_CONFINED_OPEN_H_

#include <string>

#include "absl/status/statusor.h"

namespace tandem {

// A descriptor of `path` (absolute and inside `root` as written, or relative to `root`), opened
// with `flags` (O_CLOEXEC is added), which the caller closes.
absl::StatusOr<int> OpenBeneath(const std::string& root, const std::string& path, int flags);

// The whole content of the file `path` beneath `root`; an empty `root` reads `path` unconfined.
absl::StatusOr<std::string> ReadFileBeneath(const std::string& root, const std::string& path);

}  // namespace tandem

#endif  // TANDEM_BASE_CONFINED_OPEN_H_

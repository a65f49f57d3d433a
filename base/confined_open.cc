#include "base/confined_open.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tandem {
namespace {

absl::Status OpenError(int err, const std::string& root, const std::string& rel) {
  const std::string what = root.empty() ? rel : absl::StrCat(rel, " (beneath ", root, ")");
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(absl::StrCat(what, " does not exist"));
    case EXDEV:
    case ELOOP:
      return absl::PermissionDeniedError(
          absl::StrCat(what, " leads outside ", root, " (through a symlink)"));
    default:
      return absl::InternalError(absl::StrCat("cannot open ", what, ": ", std::strerror(err)));
  }
}

// Every component opened with O_NOFOLLOW from the one before (the kernel has no openat2).
int OpenWalking(int root_fd, const std::string& rel, int flags) {
  std::vector<std::string> parts = absl::StrSplit(rel, '/', absl::SkipEmpty());
  int dir = ::dup(root_fd);
  if (dir < 0) return -1;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i] == "..") {
      ::close(dir);
      errno = EXDEV;
      return -1;
    }
    const bool last = i + 1 == parts.size();
    const int next = ::openat(dir, parts[i].c_str(),
                              (last ? flags : O_PATH | O_DIRECTORY) | O_NOFOLLOW | O_CLOEXEC);
    const int err = errno;
    ::close(dir);
    if (next < 0) {
      errno = err;
      return -1;
    }
    dir = next;
  }
  return dir;
}

}  // namespace

absl::StatusOr<int> OpenBeneath(const std::string& root, const std::string& path, int flags) {
  std::string rel = path;
  if (!path.empty() && path[0] == '/') {
    const std::string prefix = absl::StrCat(absl::StripSuffix(root, "/"), "/");
    if (!absl::StartsWith(path, prefix)) {
      return absl::InvalidArgumentError(absl::StrCat(path, " is not under ", root));
    }
    rel = path.substr(prefix.size());
  }
  if (rel.empty() || rel.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("\"", rel, "\" is not a file name"));
  }
  const int root_fd = ::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root_fd < 0) {
    return absl::InternalError(absl::StrCat("cannot open ", root, ": ", std::strerror(errno)));
  }
  struct open_how how;
  std::memset(&how, 0, sizeof how);
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  int fd = static_cast<int>(::syscall(SYS_openat2, root_fd, rel.c_str(), &how, sizeof how));
  if (fd < 0 && errno == ENOSYS) fd = OpenWalking(root_fd, rel, flags);
  const int err = errno;
  ::close(root_fd);
  if (fd < 0) return OpenError(err, root, rel);
  return fd;
}

absl::StatusOr<std::string> ReadFileBeneath(const std::string& root, const std::string& path) {
  int fd;
  if (root.empty()) {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return OpenError(errno, "", path);
  } else {
    absl::StatusOr<int> opened = OpenBeneath(root, path, O_RDONLY);
    if (!opened.ok()) return opened.status();
    fd = *opened;
  }
  std::string out;
  char buf[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat("cannot read ", path, ": ", std::strerror(err)));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

}  // namespace tandem

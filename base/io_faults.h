// Injected I/O faults: named points on tandem's write paths where a test, or the fault campaign
// (TANDEM_IO_FAULTS in tandemd's environment), makes the write fail with ENOSPC or EIO, or kills
// the process with SIGKILL (exactly what kill -9 does, at a chosen moment) — to prove that a full
// disk, a failing disk or a crash loses nothing. Unarmed (always, in production), a point costs
// one relaxed atomic load.
//
// Points: "write" (a file's data), "fsync" (a file or folder), "rename" (publishing a written
// file or folder), "sqlite.write", "sqlite.sync" (the job database's pages and its commits).
// Rules, ';'-separated, the first that matches a hit decides:
//   POINT[@SUBSTRING]=ACTION[:after=N][:times=M]
//   POINT      a point name, or * for every point
//   SUBSTRING  only paths that contain it (e.g. @checkpoints/ or @jobs.db)
//   ACTION     ENOSPC | EIO (the call fails with that errno), KILL (SIGKILL), LOG (one line on
//              stderr per hit: "tandem-io-fault: hit N POINT PATH", to size a campaign)
//   after=N    let the first N matching hits through (default 0)
//   times=M    then fire M times (default 0: every time)
// Thread-safe.
#ifndef TANDEM_BASE_IO_FAULTS_H_
#define TANDEM_BASE_IO_FAULTS_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tandem {

// The errno the operation at `point` on `path` must fail with, or 0 to go on. Does not return
// when a KILL rule fires. The rules of $TANDEM_IO_FAULTS are armed at the first call (a malformed
// value is reported on stderr once and ignored).
int IoFault(const char* point, absl::string_view path);

// Replaces the rules (INVALID_ARGUMENT naming the bad rule; nothing changes then). "" disarms.
absl::Status ArmIoFaults(absl::string_view rules);
void DisarmIoFaults();

// Faults fired (ENOSPC / EIO) since the rules were last armed.
int64_t IoFaultsFired();

// ::write, ::fsync and ::rename behind their points: -1 with errno set when a fault fires,
// else the system call's result. `path` names the file (rename: the destination).
ssize_t FaultableWrite(int fd, const void* data, size_t size, absl::string_view path);
int FaultableFsync(int fd, absl::string_view path);
int FaultableRename(const char* from, const char* to);

}  // namespace tandem

#endif  // TANDEM_BASE_IO_FAULTS_H_

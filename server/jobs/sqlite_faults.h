// The SQLite VFS the job store opens its database with: the platform's default VFS, with its
// writes and syncs behind the injected I/O faults of base/io_faults.h ("sqlite.write",
// "sqlite.sync"; ENOSPC reads as SQLITE_FULL, EIO as SQLITE_IOERR_WRITE / _FSYNC, KILL dies
// mid-commit). Unarmed it only forwards. Registered once, process-wide; thread-safe.
#ifndef TANDEM_SERVER_JOBS_SQLITE_FAULTS_H_
#define TANDEM_SERVER_JOBS_SQLITE_FAULTS_H_

namespace tandem {

// The name to pass to sqlite3_open_v2 (registered at the first call), or nullptr (the default
// VFS) if registering failed.
const char* FaultableSqliteVfs();

}  // namespace tandem

#endif  // TANDEM_SERVER_JOBS_SQLITE_FAULTS_H_

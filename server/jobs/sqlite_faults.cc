#include "server/jobs/sqlite_faults.h"

#include <errno.h>
#include <sqlite3.h>

#include <cstring>

#include "base/io_faults.h"

namespace tandem {
namespace {

// A file of this VFS: the real file's handle follows it in the same allocation.
struct File {
  sqlite3_file base;
  const char* path;  // SQLite keeps the name alive while the file is open
  sqlite3_file* real() { return reinterpret_cast<sqlite3_file*>(this + 1); }
};

sqlite3_vfs* g_real = nullptr;
sqlite3_vfs g_vfs;
sqlite3_io_methods g_methods;

File* Of(sqlite3_file* f) { return reinterpret_cast<File*>(f); }
const char* PathOf(File* f) { return f->path ? f->path : ""; }

int Close(sqlite3_file* f) { return Of(f)->real()->pMethods->xClose(Of(f)->real()); }
int Read(sqlite3_file* f, void* buf, int n, sqlite3_int64 off) {
  return Of(f)->real()->pMethods->xRead(Of(f)->real(), buf, n, off);
}
int Write(sqlite3_file* f, const void* buf, int n, sqlite3_int64 off) {
  if (const int err = IoFault("sqlite.write", PathOf(Of(f)))) {
    return err == ENOSPC ? SQLITE_FULL : SQLITE_IOERR_WRITE;
  }
  return Of(f)->real()->pMethods->xWrite(Of(f)->real(), buf, n, off);
}
int Truncate(sqlite3_file* f, sqlite3_int64 size) {
  return Of(f)->real()->pMethods->xTruncate(Of(f)->real(), size);
}
int Sync(sqlite3_file* f, int flags) {
  if (const int err = IoFault("sqlite.sync", PathOf(Of(f)))) {
    return err == ENOSPC ? SQLITE_FULL : SQLITE_IOERR_FSYNC;
  }
  return Of(f)->real()->pMethods->xSync(Of(f)->real(), flags);
}
int FileSize(sqlite3_file* f, sqlite3_int64* size) {
  return Of(f)->real()->pMethods->xFileSize(Of(f)->real(), size);
}
int Lock(sqlite3_file* f, int level) { return Of(f)->real()->pMethods->xLock(Of(f)->real(), level); }
int Unlock(sqlite3_file* f, int level) {
  return Of(f)->real()->pMethods->xUnlock(Of(f)->real(), level);
}
int CheckReservedLock(sqlite3_file* f, int* out) {
  return Of(f)->real()->pMethods->xCheckReservedLock(Of(f)->real(), out);
}
int FileControl(sqlite3_file* f, int op, void* arg) {
  return Of(f)->real()->pMethods->xFileControl(Of(f)->real(), op, arg);
}
int SectorSize(sqlite3_file* f) { return Of(f)->real()->pMethods->xSectorSize(Of(f)->real()); }
int DeviceCharacteristics(sqlite3_file* f) {
  return Of(f)->real()->pMethods->xDeviceCharacteristics(Of(f)->real());
}
int ShmMap(sqlite3_file* f, int page, int size, int extend, void volatile** out) {
  return Of(f)->real()->pMethods->xShmMap(Of(f)->real(), page, size, extend, out);
}
int ShmLock(sqlite3_file* f, int offset, int n, int flags) {
  return Of(f)->real()->pMethods->xShmLock(Of(f)->real(), offset, n, flags);
}
void ShmBarrier(sqlite3_file* f) { Of(f)->real()->pMethods->xShmBarrier(Of(f)->real()); }
int ShmUnmap(sqlite3_file* f, int del) {
  return Of(f)->real()->pMethods->xShmUnmap(Of(f)->real(), del);
}
int Fetch(sqlite3_file* f, sqlite3_int64 off, int n, void** out) {
  return Of(f)->real()->pMethods->xFetch(Of(f)->real(), off, n, out);
}
int Unfetch(sqlite3_file* f, sqlite3_int64 off, void* p) {
  return Of(f)->real()->pMethods->xUnfetch(Of(f)->real(), off, p);
}

int Open(sqlite3_vfs* /*vfs*/, sqlite3_filename name, sqlite3_file* f, int flags, int* out_flags) {
  File* file = Of(f);
  file->path = name;
  file->base.pMethods = nullptr;
  const int rc = g_real->xOpen(g_real, name, file->real(), flags, out_flags);
  // Forward only what the real file has (its methods are set even when opening failed).
  if (file->real()->pMethods != nullptr) file->base.pMethods = &g_methods;
  return rc;
}

void Register() {
  g_real = sqlite3_vfs_find(nullptr);
  if (g_real == nullptr) return;
  g_vfs = *g_real;
  g_vfs.szOsFile = static_cast<int>(sizeof(File)) + g_real->szOsFile;
  g_vfs.zName = "tandem-faultable";
  g_vfs.pNext = nullptr;
  g_vfs.xOpen = &Open;
  g_methods = sqlite3_io_methods{3,        &Close,    &Read,     &Write,
                                 &Truncate, &Sync,     &FileSize, &Lock,
                                 &Unlock,   &CheckReservedLock, &FileControl,
                                 &SectorSize, &DeviceCharacteristics, &ShmMap,
                                 &ShmLock,  &ShmBarrier, &ShmUnmap, &Fetch,
                                 &Unfetch};
  if (sqlite3_vfs_register(&g_vfs, /*makeDflt=*/0) != SQLITE_OK) g_real = nullptr;
}

}  // namespace

const char* FaultableSqliteVfs() {
  static const bool registered = [] {
    Register();
    return g_real != nullptr;
  }();
  return registered ? g_vfs.zName : nullptr;
}

}  // namespace tandem

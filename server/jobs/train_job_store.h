// TrainJobStore: the durable record of training jobs — one SQLite database (normally
// <state_dir>/jobs.db) holding every job, its per-step metrics and its event log. Torch-free.
//
// Contract:
//   - Durability: every write is committed, and fsynced (WAL, synchronous=FULL), when the call
//     returns OK. A write that fails changes nothing (each call, and each WriteBatch, is one
//     transaction).
//   - Ids: "job-000001", "job-000002"... in submission order; never reused, also after Delete or
//     a restart (AUTOINCREMENT). Past a million the number just gets longer.
//   - The job row holds the whole TrainJob except `history`; Update() replaces it wholesale, so
//     callers update the job they read (Get/Create) rather than building one from scratch.
//     `history` is assembled from the metrics table by Get(id, /*include_history=*/true).
//   - Metrics are keyed by (job, step): after a crash the steps that are re-run overwrite the
//     earlier rows (INSERT OR REPLACE), so the history stays one row per step, oldest first.
//   - Events (state changes, evals, logs; not per-step metrics) are append-only, in order.
//   - Errors: NOT_FOUND `no training job "x"` for an unknown id; FAILED_PRECONDITION naming the
//     path and SQLite's message when the file cannot be opened or is not a job store (or a
//     newer schema); DATA_LOSS for a row that does not parse; INTERNAL for other SQLite errors.
//   - Thread-safe: one connection behind a mutex. One process per database file (a second
//     opener waits busy_timeout on locks, it does not corrupt anything).
//
// Schema (PRAGMA user_version = 1):
//   jobs(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, state INTEGER, priority INTEGER,
//        spec BLOB /*TrainJobSpec*/, job BLOB /*TrainJob without id, spec, history*/)
//   metrics(job_id, step, metrics BLOB /*TrainMetrics*/, PRIMARY KEY(job_id, step))
//   events(n INTEGER PRIMARY KEY AUTOINCREMENT, job_id, event BLOB /*TrainJobEvent*/)
// metrics and events reference jobs(id) with ON DELETE CASCADE.
#ifndef TANDEM_SERVER_JOBS_TRAIN_JOB_STORE_H_
#define TANDEM_SERVER_JOBS_TRAIN_JOB_STORE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tandem/v1/training.pb.h"

struct sqlite3;

namespace tandem {

class TrainJobStore {
 public:
  // Writes committed together by Commit(): all or none. E.g. a state change and its event, or a
  // burst of step metrics with one fsync.
  class WriteBatch {
   public:
    WriteBatch& Update(const tandem::v1::TrainJob& job);
    WriteBatch& RecordMetrics(const std::string& id, const tandem::v1::TrainMetrics& m);
    WriteBatch& AppendEvent(const std::string& id, const tandem::v1::TrainJobEvent& e);
    bool empty() const { return ops_.empty(); }
    size_t size() const { return ops_.size(); }

   private:
    friend class TrainJobStore;
    enum class Kind { kUpdate, kMetrics, kEvent };
    struct Op {
      Kind kind;
      std::string id;
      std::string blob;        // serialized message
      int64_t key = 0;         // step (kMetrics), state (kUpdate)
      int64_t priority = 0;    // kUpdate
      std::string spec_blob;   // kUpdate
    };
    std::vector<Op> ops_;
  };

  // Opens (creating if needed) the database at `db_path`; its folder must exist. Sets WAL,
  // synchronous=FULL, foreign_keys and a busy timeout, and creates or checks the schema.
  static absl::StatusOr<std::unique_ptr<TrainJobStore>> Open(const std::string& db_path);
  ~TrainJobStore();
  TrainJobStore(const TrainJobStore&) = delete;
  TrainJobStore& operator=(const TrainJobStore&) = delete;

  // Stores a new job: the next id, state QUEUED, created = now, attempt 0. Returns it.
  absl::StatusOr<tandem::v1::TrainJob> Create(const tandem::v1::TrainJobSpec& spec,
                                              absl::Time now);
  // Replaces the job's row (everything but `history`, which is ignored). NOT_FOUND if absent.
  absl::Status Update(const tandem::v1::TrainJob& job);
  absl::StatusOr<tandem::v1::TrainJob> Get(const std::string& id, bool include_history = false);
  // Jobs in submission order, without history; an empty `states` lists every job.
  absl::StatusOr<std::vector<tandem::v1::TrainJob>> List(
      const std::vector<tandem::v1::TrainJobState>& states = {});
  // Deletes the job with its metrics and events. NOT_FOUND if absent. Its id is not reused.
  absl::Status Delete(const std::string& id);

  // One optimizer step's metrics, keyed by (id, m.step()): a re-run step replaces the old row.
  absl::Status RecordMetrics(const std::string& id, const tandem::v1::TrainMetrics& m);
  // The job's metrics, ordered by step.
  absl::StatusOr<std::vector<tandem::v1::TrainMetrics>> History(const std::string& id);

  // Appends to the job's event log (state changes, evals, logs).
  absl::Status AppendEvent(const std::string& id, const tandem::v1::TrainJobEvent& e);
  // The job's events, oldest first.
  absl::StatusOr<std::vector<tandem::v1::TrainJobEvent>> Events(const std::string& id);

  // Applies every write of `batch` in one transaction; on any error (e.g. NOT_FOUND for one of
  // its jobs) none is applied.
  absl::Status Commit(const WriteBatch& batch);

  const std::string& path() const { return path_; }

 private:
  TrainJobStore(std::string path, sqlite3* db) : path_(std::move(path)), db_(db) {}

  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SqlError(const char* what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ApplyLocked(const WriteBatch::Op& op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CommitLocked(const WriteBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckExistsLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<tandem::v1::TrainMetrics>> HistoryLocked(const std::string& id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace tandem

#endif  // TANDEM_SERVER_JOBS_TRAIN_JOB_STORE_H_

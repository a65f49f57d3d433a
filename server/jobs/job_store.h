// JobStore: the durable record of training jobs — one SQLite database (normally
// <state_dir>/jobs.db) holding every job, its per-step metrics and its event log. Torch-free.
//
// Contract:
//   - Durability: every write is committed, and fsynced (WAL, synchronous=FULL), when the call
//     returns OK. A write that fails changes nothing (each call, and each WriteBatch, is one
//     transaction).
//   - Ids: "job-000001", "job-000002"... in submission order; never reused, also after Delete or
//     a restart (AUTOINCREMENT). Past a million the number just gets longer.
//   - The job row holds the whole Job except `history`; Update() replaces it wholesale, so
//     callers update the job they read (Get/Create) rather than building one from scratch.
//     `history` is assembled from the metrics table by Get(id, /*include_history=*/true).
//   - Metrics are keyed by (job, step): after a crash the steps that are re-run overwrite the
//     earlier rows (INSERT OR REPLACE), so the history stays one row per step, oldest first.
//   - Events (state changes, evals, logs; not per-step metrics) are append-only, in order.
//   - Errors: NOT_FOUND `no training job "x"` for an unknown id; FAILED_PRECONDITION naming the
//     path and SQLite's message when the file cannot be opened or is not a job store (or a
//     newer schema, or the protobuf rows of schema 1); DATA_LOSS for a row that does not parse;
//     INTERNAL for other SQLite errors.
//   - Thread-safe: one connection behind a mutex. One process per database file (a second
//     opener waits busy_timeout on locks, it does not corrupt anything).
//
// Schema (PRAGMA user_version = 2; rows are JSON, see job_json.h):
//   jobs(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, state INTEGER, priority INTEGER,
//        spec TEXT /*JobSpec*/, job TEXT /*Job without id, spec, history*/)
//   metrics(job_id, step, metrics TEXT /*StepRecord*/, PRIMARY KEY(job_id, step))
//   events(n INTEGER PRIMARY KEY AUTOINCREMENT, job_id, event TEXT /*JobEvent*/)
// metrics and events reference jobs(id) with ON DELETE CASCADE.
#ifndef TANDEM_SERVER_JOBS_JOB_STORE_H_
#define TANDEM_SERVER_JOBS_JOB_STORE_H_

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
#include "server/jobs/job.h"

struct sqlite3;

namespace tandem {

class JobStore {
 public:
  // Writes committed together by Commit(): all or none. E.g. a state change and its event, or a
  // burst of step metrics with one fsync.
  class WriteBatch {
   public:
    WriteBatch& Update(const Job& job);
    WriteBatch& RecordMetrics(const std::string& id, const StepRecord& m);
    WriteBatch& AppendEvent(const std::string& id, const JobEvent& e);
    bool empty() const { return ops_.empty(); }
    size_t size() const { return ops_.size(); }

   private:
    friend class JobStore;
    enum class Kind { kUpdate, kMetrics, kEvent };
    struct Op {
      Kind kind;
      std::string id;
      std::string json;        // the record (job_json.h)
      int64_t key = 0;         // step (kMetrics), state (kUpdate)
      int64_t priority = 0;    // kUpdate
      std::string spec_json;   // kUpdate
    };
    std::vector<Op> ops_;
  };

  // Opens (creating if needed) the database at `db_path`; its folder must exist. Sets WAL,
  // synchronous=FULL, foreign_keys and a busy timeout, and creates or checks the schema.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& db_path);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Stores a new job: the next id, state QUEUED, created = now, attempt 0. Returns it.
  absl::StatusOr<Job> Create(const JobSpec& spec,
                                              absl::Time now);
  // Replaces the job's row (everything but `history`, which is ignored). NOT_FOUND if absent.
  absl::Status Update(const Job& job);
  absl::StatusOr<Job> Get(const std::string& id, bool include_history = false);
  // Jobs in submission order, without history; an empty `states` lists every job.
  absl::StatusOr<std::vector<Job>> List(
      const std::vector<JobState>& states = {});
  // Deletes the job with its metrics and events. NOT_FOUND if absent. Its id is not reused.
  absl::Status Delete(const std::string& id);

  // One optimizer step's metrics, keyed by (id, m.step): a re-run step replaces the old row.
  absl::Status RecordMetrics(const std::string& id, const StepRecord& m);
  // The job's metrics, ordered by step.
  absl::StatusOr<std::vector<StepRecord>> History(const std::string& id);

  // Appends to the job's event log (state changes, evals, logs).
  absl::Status AppendEvent(const std::string& id, const JobEvent& e);
  // The job's events, oldest first.
  absl::StatusOr<std::vector<JobEvent>> Events(const std::string& id);

  // Applies every write of `batch` in one transaction; on any error (e.g. NOT_FOUND for one of
  // its jobs) none is applied.
  absl::Status Commit(const WriteBatch& batch);

  const std::string& path() const { return path_; }

 private:
  JobStore(std::string path, sqlite3* db) : path_(std::move(path)), db_(db) {}

  // Opening: pragmas, then the schema created (a new file) or checked.
  absl::Status SetUpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CreateSchemaLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckSchemaLocked(int version) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SetupError(int code, const std::string& what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SqlError(const char* what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ApplyLocked(const WriteBatch::Op& op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CommitLocked(const WriteBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckExistsLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<StepRecord>> HistoryLocked(const std::string& id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace tandem

#endif  // TANDEM_SERVER_JOBS_JOB_STORE_H_

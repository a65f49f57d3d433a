#include "server/jobs/job_store.h"

#include "server/jobs/job_json.h"
#include "server/jobs/sqlite_faults.h"

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace tandem {
namespace {


constexpr int kSchemaVersion = 2;
constexpr int kBusyTimeoutMs = 10000;

constexpr char kSchema[] = R"sql(
CREATE TABLE jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT UNIQUE,
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  spec TEXT NOT NULL,
  job TEXT NOT NULL
);
CREATE INDEX jobs_by_state ON jobs(state, seq);
CREATE TABLE metrics (
  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  step INTEGER NOT NULL,
  metrics TEXT NOT NULL,
  PRIMARY KEY (job_id, step)
) WITHOUT ROWID;
CREATE TABLE events (
  n INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  event TEXT NOT NULL
);
CREATE INDEX events_by_job ON events(job_id, n);
)sql";

std::string NotFoundMessage(const std::string& id) {
  return absl::StrFormat("no training job \"%s\"", id);
}

absl::StatusCode CodeFor(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::StatusCode::kUnavailable;
    case SQLITE_FULL:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::StatusCode::kDataLoss;
    default:
      return absl::StatusCode::kInternal;
  }
}

// A prepared statement, finalized on scope exit. Errors come back from the store's SqlError.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  bool ok() const { return rc_ == SQLITE_OK; }
  int rc() const { return rc_; }
  sqlite3_stmt* get() { return stmt_; }

  Stmt& Bind(int i, int64_t v) {
    Check(sqlite3_bind_int64(stmt_, i, v));
    return *this;
  }
  Stmt& Bind(int i, const std::string& text) {
    Check(sqlite3_bind_text(stmt_, i, text.data(), static_cast<int>(text.size()),
                            SQLITE_TRANSIENT));
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code (kept in rc()).
  int Step() {
    if (rc_ != SQLITE_OK && rc_ != SQLITE_ROW && rc_ != SQLITE_DONE) return rc_;
    rc_ = sqlite3_step(stmt_);
    return rc_;
  }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }
  std::string Text(int col) {
    const unsigned char* p = sqlite3_column_text(stmt_, col);
    return p ? std::string(reinterpret_cast<const char*>(p),
                           static_cast<size_t>(sqlite3_column_bytes(stmt_, col)))
             : std::string();
  }

 private:
  void Check(int rc) {
    if (rc != SQLITE_OK && rc_ == SQLITE_OK) rc_ = rc;
  }
  sqlite3_stmt* stmt_ = nullptr;
  int rc_ = SQLITE_OK;
};


}  // namespace

// --- WriteBatch ---------------------------------------------------------------------------------

JobStore::WriteBatch& JobStore::WriteBatch::Update(const Job& job) {
  Op op;
  op.kind = Kind::kUpdate;
  op.id = job.id;
  op.json = JobToJson(job, /*row=*/true);
  op.key = static_cast<int64_t>(job.state);
  op.priority = job.spec.priority;
  op.spec_json = JobSpecToJson(job.spec);
  ops_.push_back(std::move(op));
  return *this;
}

JobStore::WriteBatch& JobStore::WriteBatch::RecordMetrics(const std::string& id,
                                                                    const StepRecord& m) {
  Op op;
  op.kind = Kind::kMetrics;
  op.id = id;
  op.json = StepRecordToJson(m);
  op.key = m.step;
  ops_.push_back(std::move(op));
  return *this;
}

JobStore::WriteBatch& JobStore::WriteBatch::AppendEvent(const std::string& id,
                                                                  const JobEvent& e) {
  Op op;
  op.kind = Kind::kEvent;
  op.id = id;
  op.json = JobEventToJson(e);
  ops_.push_back(std::move(op));
  return *this;
}

// --- opening ------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& db_path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(db_path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                           FaultableSqliteVfs());
  if (rc != SQLITE_OK) {
    std::string message = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close_v2(db);
    return absl::FailedPreconditionError(
        absl::StrFormat("cannot open the training job store %s: %s", db_path, message));
  }
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, kBusyTimeoutMs);
  std::unique_ptr<JobStore> store(new JobStore(db_path, db));
  absl::MutexLock lock(&store->mu_);
  if (absl::Status s = store->SetUpLocked(); !s.ok()) return s;
  return store;
}

absl::Status JobStore::SetupError(int code, const std::string& what) {
  // Any failure while setting up means the file is not (or not yet) a usable job store.
  const int primary = code & 0xff;
  const bool unusable = primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT ||
                        primary == SQLITE_CANTOPEN || primary == SQLITE_READONLY ||
                        primary == SQLITE_PERM || primary == SQLITE_IOERR ||
                        primary == SQLITE_ERROR;
  const std::string message = absl::StrFormat("cannot open the training job store %s: %s: %s",
                                              path_, what, sqlite3_errmsg(db_));
  return unusable ? absl::FailedPreconditionError(message) : absl::InternalError(message);
}

absl::Status JobStore::SetUpLocked() {
  // journal_mode answers a row; sqlite3_exec steps through it.
  for (const char* pragma : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL",
                             "PRAGMA foreign_keys=ON"}) {
    const int rc = sqlite3_exec(db_, pragma, nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return SetupError(rc, pragma);
  }
  int version = 0;
  {
    Stmt st(db_, "PRAGMA user_version");
    if (st.Step() != SQLITE_ROW) return SetupError(st.rc(), "reading its schema version");
    version = static_cast<int>(st.Int(0));
  }
  if (version == 1) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "cannot open the training job store %s: it was written by an earlier tandemd (schema 1, "
        "protobuf rows) and this build reads schema %d (JSON rows); it was left untouched: move "
        "it aside to start a new store",
        path_, kSchemaVersion));
  }
  if (version > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "cannot open the training job store %s: its schema version %d is newer than this "
        "build's (%d)",
        path_, version, kSchemaVersion));
  }
  return version == 0 ? CreateSchemaLocked() : CheckSchemaLocked(version);
}

absl::Status JobStore::CreateSchemaLocked() {
  int rc = sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return SetupError(rc, "creating its schema");
  rc = sqlite3_exec(db_, kSchema, nullptr, nullptr, nullptr);
  if (rc == SQLITE_OK) {
    rc = sqlite3_exec(db_, absl::StrCat("PRAGMA user_version=", kSchemaVersion).c_str(), nullptr,
                      nullptr, nullptr);
  }
  if (rc == SQLITE_OK) rc = sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr);
  if (rc == SQLITE_OK) return absl::OkStatus();
  absl::Status status = SetupError(rc, "creating its schema");
  sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  return status;
}

absl::Status JobStore::CheckSchemaLocked(int version) {
  // A file of our version must have our tables (user_version alone could be anyone's).
  Stmt st(db_,
          "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND "
          "name IN ('jobs', 'metrics', 'events')");
  if (st.Step() != SQLITE_ROW) return SetupError(st.rc(), "reading its schema");
  if (st.Int(0) == 3) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrFormat(
      "cannot open the training job store %s: schema version %d but the jobs, metrics and "
      "events tables are not all there",
      path_, version));
}

JobStore::~JobStore() {
  absl::MutexLock lock(&mu_);
  sqlite3_close_v2(db_);
}

// --- helpers ------------------------------------------------------------------------------------

absl::Status JobStore::SqlError(const char* what) {
  const int rc = sqlite3_extended_errcode(db_);
  return absl::Status(CodeFor(rc), absl::StrFormat("training job store %s: %s: %s", path_, what,
                                                   sqlite3_errmsg(db_)));
}

absl::Status JobStore::Exec(const char* sql) {
  if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) return SqlError(sql);
  return absl::OkStatus();
}

absl::Status JobStore::CheckExistsLocked(const std::string& id) {
  Stmt st(db_, "SELECT 1 FROM jobs WHERE id = ?");
  st.Bind(1, id);
  const int rc = st.Step();
  if (rc == SQLITE_ROW) return absl::OkStatus();
  if (rc == SQLITE_DONE) return absl::NotFoundError(NotFoundMessage(id));
  return SqlError("looking up a job");
}

absl::Status JobStore::ApplyLocked(const WriteBatch::Op& op) {
  using Kind = WriteBatch::Kind;
  switch (op.kind) {
    case Kind::kUpdate: {
      Stmt st(db_, "UPDATE jobs SET state = ?, priority = ?, spec = ?, job = ? WHERE id = ?");
      st.Bind(1, op.key).Bind(2, op.priority).Bind(3, op.spec_json).Bind(4, op.json)
          .Bind(5, op.id);
      if (st.Step() != SQLITE_DONE) return SqlError("updating a job");
      if (sqlite3_changes(db_) == 0) return absl::NotFoundError(NotFoundMessage(op.id));
      return absl::OkStatus();
    }
    case Kind::kMetrics:
    case Kind::kEvent: {
      const bool metrics = op.kind == Kind::kMetrics;
      Stmt st(db_, metrics
                       ? "INSERT OR REPLACE INTO metrics(job_id, step, metrics) VALUES (?, ?, ?)"
                       : "INSERT INTO events(job_id, event) VALUES (?, ?)");
      st.Bind(1, op.id);
      if (metrics) {
        st.Bind(2, op.key).Bind(3, op.json);
      } else {
        st.Bind(2, op.json);
      }
      if (st.Step() != SQLITE_DONE) {
        if (sqlite3_extended_errcode(db_) == SQLITE_CONSTRAINT_FOREIGNKEY) {
          return absl::NotFoundError(NotFoundMessage(op.id));
        }
        return SqlError(metrics ? "recording metrics" : "appending an event");
      }
      return absl::OkStatus();
    }
  }
  return absl::InternalError("unknown write");
}

absl::Status JobStore::CommitLocked(const WriteBatch& batch) {
  if (batch.empty()) return absl::OkStatus();
  if (absl::Status s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
  absl::Status status;
  for (const auto& op : batch.ops_) {
    status = ApplyLocked(op);
    if (!status.ok()) break;
  }
  if (status.ok()) status = Exec("COMMIT");
  if (!status.ok()) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  return status;
}

// --- writes -------------------------------------------------------------------------------------

absl::StatusOr<Job> JobStore::Create(const JobSpec& spec, absl::Time now) {
  Job job;
  job.spec = spec;
  job.state = JobState::kQueued;
  job.created = now;
  job.attempt = 0;

  absl::MutexLock lock(&mu_);
  if (absl::Status s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
  absl::Status status;
  {
    Stmt st(db_, "INSERT INTO jobs(id, state, priority, spec, job) VALUES (NULL, ?, ?, ?, ?)");
    st.Bind(1, static_cast<int64_t>(job.state)).Bind(2, spec.priority)
        .Bind(3, JobSpecToJson(spec)).Bind(4, JobToJson(job, /*row=*/true));
    if (st.Step() != SQLITE_DONE) status = SqlError("creating a job");
  }
  if (status.ok()) {
    const int64_t seq = sqlite3_last_insert_rowid(db_);
    job.id = absl::StrFormat("job-%06d", seq);
    Stmt st(db_, "UPDATE jobs SET id = ? WHERE seq = ?");
    st.Bind(1, job.id).Bind(2, seq);
    if (st.Step() != SQLITE_DONE) status = SqlError("naming a job");
  }
  if (status.ok()) status = Exec("COMMIT");
  if (!status.ok()) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return status;
  }
  return job;
}

absl::Status JobStore::Update(const Job& job) {
  WriteBatch batch;
  batch.Update(job);
  return Commit(batch);
}

absl::Status JobStore::RecordMetrics(const std::string& id, const StepRecord& m) {
  WriteBatch batch;
  batch.RecordMetrics(id, m);
  return Commit(batch);
}

absl::Status JobStore::AppendEvent(const std::string& id, const JobEvent& e) {
  WriteBatch batch;
  batch.AppendEvent(id, e);
  return Commit(batch);
}

absl::Status JobStore::Commit(const WriteBatch& batch) {
  absl::MutexLock lock(&mu_);
  return CommitLocked(batch);
}

absl::Status JobStore::Delete(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Stmt st(db_, "DELETE FROM jobs WHERE id = ?");
  st.Bind(1, id);
  if (st.Step() != SQLITE_DONE) return SqlError("deleting a job");
  if (sqlite3_changes(db_) == 0) return absl::NotFoundError(NotFoundMessage(id));
  return absl::OkStatus();
}

// --- reads --------------------------------------------------------------------------------------

namespace {

// Columns: id, spec, job.
absl::StatusOr<Job> ReadJobRow(Stmt& st, const std::string& path) {
  const std::string id = st.Text(0);
  absl::StatusOr<Job> job = JobFromJson(st.Text(2));
  absl::StatusOr<JobSpec> spec = JobSpecFromJson(st.Text(1));
  if (!job.ok() || !spec.ok()) {
    return absl::DataLossError(absl::StrFormat(
        "training job store %s: the row of job \"%s\" does not parse: %s", path, id,
        (job.ok() ? spec.status() : job.status()).message()));
  }
  job->id = id;
  job->spec = *std::move(spec);
  return job;
}

}  // namespace

absl::StatusOr<Job> JobStore::Get(const std::string& id, bool include_history) {
  absl::MutexLock lock(&mu_);
  Job job;
  {
    Stmt st(db_, "SELECT id, spec, job FROM jobs WHERE id = ?");
    st.Bind(1, id);
    const int rc = st.Step();
    if (rc == SQLITE_DONE) return absl::NotFoundError(NotFoundMessage(id));
    if (rc != SQLITE_ROW) return SqlError("reading a job");
    absl::StatusOr<Job> read = ReadJobRow(st, path_);
    if (!read.ok()) return read.status();
    job = *std::move(read);
  }
  if (include_history) {
    absl::StatusOr<std::vector<StepRecord>> history = HistoryLocked(id);
    if (!history.ok()) return history.status();
    job.history = *std::move(history);
  }
  return job;
}

absl::StatusOr<std::vector<Job>> JobStore::List(
    const std::vector<JobState>& states) {
  std::string sql = "SELECT id, spec, job FROM jobs";
  if (!states.empty()) {
    std::vector<std::string> marks(states.size(), "?");
    absl::StrAppend(&sql, " WHERE state IN (", absl::StrJoin(marks, ", "), ")");
  }
  absl::StrAppend(&sql, " ORDER BY seq");
  absl::MutexLock lock(&mu_);
  Stmt st(db_, sql.c_str());
  for (size_t i = 0; i < states.size(); ++i) {
    st.Bind(static_cast<int>(i + 1), static_cast<int64_t>(states[i]));
  }
  std::vector<Job> jobs;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    absl::StatusOr<Job> job = ReadJobRow(st, path_);
    if (!job.ok()) return job.status();
    jobs.push_back(*std::move(job));
  }
  if (rc != SQLITE_DONE) return SqlError("listing jobs");
  return jobs;
}

absl::StatusOr<std::vector<StepRecord>> JobStore::History(const std::string& id) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckExistsLocked(id); !s.ok()) return s;
  return HistoryLocked(id);
}

absl::StatusOr<std::vector<StepRecord>> JobStore::HistoryLocked(const std::string& id) {
  Stmt st(db_, "SELECT step, metrics FROM metrics WHERE job_id = ? ORDER BY step");
  st.Bind(1, id);
  std::vector<StepRecord> history;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    absl::StatusOr<StepRecord> m = StepRecordFromJson(st.Text(1));
    if (!m.ok()) {
      return absl::DataLossError(absl::StrFormat(
          "training job store %s: the metrics of job \"%s\" step %d do not parse", path_, id,
          st.Int(0)));
    }
    history.push_back(*m);
  }
  if (rc != SQLITE_DONE) return SqlError("reading metrics");
  return history;
}

absl::StatusOr<std::vector<JobEvent>> JobStore::Events(const std::string& id) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckExistsLocked(id); !s.ok()) return s;
  Stmt st(db_, "SELECT n, event FROM events WHERE job_id = ? ORDER BY n");
  st.Bind(1, id);
  std::vector<JobEvent> events;
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    absl::StatusOr<JobEvent> e = JobEventFromJson(st.Text(1));
    if (!e.ok()) {
      return absl::DataLossError(absl::StrFormat(
          "training job store %s: event %d of job \"%s\" does not parse", path_, st.Int(0), id));
    }
    events.push_back(*std::move(e));
  }
  if (rc != SQLITE_DONE) return SqlError("reading events");
  return events;
}

}  // namespace tandem

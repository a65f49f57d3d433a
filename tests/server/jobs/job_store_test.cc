#include "server/jobs/job_store.h"

#include <sqlite3.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/jobs/job_json.h"

namespace tandem {
namespace {

// Two records are equal when their JSON forms are.
std::string AsJson(const Job& job) { return JobToJson(job); }
std::string AsJson(const JobEvent& e) { return JobEventToJson(e); }

::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part
                                       << "\"";
}

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("tandem_store_test_", getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "jobs.db").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<JobStore> OpenStore() {
    absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path_);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  static JobSpec Spec(const std::string& name, int priority = 0) {
    JobSpec spec;
    spec.name = name;
    spec.kind = ModelKind::kText;
    spec.dataset = "fortunes.txt";
    spec.priority = priority;
    spec.text_model.emplace();
    spec.text_model->dim = 64;
    spec.text_model->layers = 2;
    spec.hyper = UnsetHyperparams();
    spec.hyper->steps = 100;
    spec.hyper->lr = 3e-4;
    return spec;
  }

  static StepRecord Metrics(int64_t step, double loss) {
    StepRecord m;
    m.step = step;
    m.total_steps = 100;
    m.loss = loss;
    m.lr = 1e-3;
    m.grad_norm = 0.5;
    return m;
  }

  static JobEvent LogEvent(const std::string& text) {
    return JobEvent{absl::FromUnixSeconds(1700000000), JobEvent::Log{text}};
  }

  std::filesystem::path dir_;
  std::string path_;
  const absl::Time now_ = absl::FromUnixSeconds(1700000000) + absl::Milliseconds(250);
};

TEST_F(JobStoreTest, CreateAssignsIdsAndDefaults) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<Job> a = store->Create(Spec("a"), now_);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->id, "job-000001");
  EXPECT_EQ(a->state, JobState::kQueued);
  EXPECT_EQ(a->attempt, 0);
  EXPECT_EQ(a->created, now_);
  EXPECT_EQ(a->spec.name, "a");
  absl::StatusOr<Job> b = store->Create(Spec("b"), now_);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->id, "job-000002");

  absl::StatusOr<Job> got = store->Get("job-000001");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(AsJson(*got), AsJson(*a));
}

TEST_F(JobStoreTest, TimestampBeforeEpochRoundTrips) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  const absl::Time t = absl::FromUnixSeconds(-1) + absl::Milliseconds(500);
  absl::StatusOr<Job> a = store->Create(Spec("a"), t);
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<Job> got = store->Get(a->id);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->created, t);
  EXPECT_EQ(got->created - absl::UnixEpoch(), absl::Milliseconds(-500));
}

TEST_F(JobStoreTest, ListFiltersByStateInSubmissionOrder) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  // Priorities out of order: listing is by submission, not priority.
  std::vector<Job> jobs;
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<Job> job = store->Create(Spec(absl::StrCat("j", i), 5 - i), now_);
    ASSERT_TRUE(job.ok()) << job.status();
    jobs.push_back(*job);
  }
  jobs[1].state = JobState::kRunning;
  jobs[3].state = JobState::kRunning;
  jobs[4].state = JobState::kFailed;
  for (int i : {1, 3, 4}) ASSERT_TRUE(store->Update(jobs[i]).ok());

  auto ids = [](const std::vector<Job>& list) {
    std::vector<std::string> out;
    for (const auto& j : list) out.push_back(j.id);
    return out;
  };
  absl::StatusOr<std::vector<Job>> all = store->List({});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(ids(*all), (std::vector<std::string>{"job-000001", "job-000002", "job-000003",
                                                 "job-000004", "job-000005"}));
  EXPECT_EQ((*all)[2].spec.name, "j2");

  absl::StatusOr<std::vector<Job>> running = store->List({JobState::kRunning});
  ASSERT_TRUE(running.ok());
  EXPECT_EQ(ids(*running), (std::vector<std::string>{"job-000002", "job-000004"}));

  absl::StatusOr<std::vector<Job>> some =
      store->List({JobState::kFailed, JobState::kQueued});
  ASSERT_TRUE(some.ok());
  EXPECT_EQ(ids(*some), (std::vector<std::string>{"job-000001", "job-000003", "job-000005"}));

  absl::StatusOr<std::vector<Job>> none = store->List({JobState::kSucceeded});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST_F(JobStoreTest, UpdateReplacesTheRowButNotHistory) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<Job> job = store->Create(Spec("a"), now_);
  ASSERT_TRUE(job.ok());
  job->state = JobState::kFailed;
  job->error = "out of memory";
  job->attempt = 2;
  job->started = absl::FromUnixSeconds(1700000100);
  job->finished = absl::FromUnixSeconds(1700000200);
  job->latest = Metrics(42, 2.5);
  job->best_eval.emplace();
  job->best_eval->step = 40;
  job->best_eval->loss = 2.75;
  job->best_eval->text_sample = "once upon";
  job->checkpoint_step = 40;
  job->deployed_as = "fortunes";
  job->deployed_step = 40;
  job->spec.priority = 9;
  job->history.push_back(Metrics(1, 9.0));  // not stored: history comes from RecordMetrics
  ASSERT_TRUE(store->Update(*job).ok());

  absl::StatusOr<Job> got = store->Get(job->id, /*include_history=*/true);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->history.size(), 0u);
  job->history.clear();
  EXPECT_EQ(AsJson(*got), AsJson(*job));
  EXPECT_EQ(got->spec.priority, 9);

  Job missing = *job;
  missing.id = "job-000099";
  absl::Status status = store->Update(missing);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_TRUE(Contains(std::string(status.message()), "no training job \"job-000099\""));
}

TEST_F(JobStoreTest, NotFound) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<Job> got = store->Get("job-000001");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(got.status().message(), "no training job \"job-000001\"");
  EXPECT_EQ(store->Get("nonsense").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->RecordMetrics("job-000001", Metrics(1, 1)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->AppendEvent("job-000001", LogEvent("x")).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Events("job-000001").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->History("job-000001").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Delete("job-000001").code(), absl::StatusCode::kNotFound);
}

TEST_F(JobStoreTest, MetricsOverwriteTheSameStepAndComeBackInStepOrder) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<Job> job = store->Create(Spec("a"), now_);
  ASSERT_TRUE(job.ok());
  for (int step = 1; step <= 5; ++step) {
    ASSERT_TRUE(store->RecordMetrics(job->id, Metrics(step, 10.0 - step)).ok());
  }
  // A crash after step 5, resumed from the checkpoint of step 3: steps 4 and 5 are re-run.
  ASSERT_TRUE(store->RecordMetrics(job->id, Metrics(4, 1.25)).ok());
  ASSERT_TRUE(store->RecordMetrics(job->id, Metrics(5, 1.5)).ok());
  ASSERT_TRUE(store->RecordMetrics(job->id, Metrics(6, 1.75)).ok());

  absl::StatusOr<Job> got = store->Get(job->id, /*include_history=*/true);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->history.size(), 6u);
  const std::vector<double> losses = {9, 8, 7, 1.25, 1.5, 1.75};
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(got->history[i].step, i + 1);
    EXPECT_EQ(got->history[i].loss, losses[i]);
  }
  absl::StatusOr<Job> without = store->Get(job->id, /*include_history=*/false);
  ASSERT_TRUE(without.ok());
  EXPECT_EQ(without->history.size(), 0u);
  absl::StatusOr<std::vector<StepRecord>> history = store->History(job->id);
  ASSERT_TRUE(history.ok());
  EXPECT_EQ(history->size(), 6u);

  // Another job's metrics stay apart.
  absl::StatusOr<Job> other = store->Create(Spec("b"), now_);
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(store->RecordMetrics(other->id, Metrics(1, 5)).ok());
  history = store->History(other->id);
  ASSERT_TRUE(history.ok());
  ASSERT_EQ(history->size(), 1u);
  EXPECT_EQ((*history)[0].loss, 5);
}

TEST_F(JobStoreTest, EventsRoundTripInOrder) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<Job> job = store->Create(Spec("a"), now_);
  ASSERT_TRUE(job.ok());
  const JobEvent state{absl::FromUnixSeconds(1700000001), JobState::kRunning};
  EvalRecord er;
  er.step = 100;
  er.loss = 2.5;
  er.bits_per_byte = 1.25;
  er.text_sample = "The end.";
  er.image_sample_png = std::string("\x89PNG\0\x01", 6);
  er.improved = true;
  const JobEvent eval{absl::FromUnixSeconds(1700000002), er};
  const std::vector<JobEvent> sent = {state, LogEvent("checkpoint step 100"), eval,
                                           LogEvent("deployed as fortunes")};
  for (const auto& e : sent) ASSERT_TRUE(store->AppendEvent(job->id, e).ok());
  // Events of another job do not mix in.
  absl::StatusOr<Job> other = store->Create(Spec("b"), now_);
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(store->AppendEvent(other->id, LogEvent("other")).ok());

  absl::StatusOr<std::vector<JobEvent>> got = store->Events(job->id);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) {
    EXPECT_EQ(AsJson((*got)[i]), AsJson(sent[i])) << i;
  }
  absl::StatusOr<std::vector<JobEvent>> none = store->Events(other->id);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->size(), 1u);
}

TEST_F(JobStoreTest, WriteBatchIsAllOrNothing) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<Job> job = store->Create(Spec("a"), now_);
  ASSERT_TRUE(job.ok());
  Job running = *job;
  running.state = JobState::kRunning;

  JobStore::WriteBatch bad;
  bad.Update(running).RecordMetrics(job->id, Metrics(1, 3)).AppendEvent("job-000077",
                                                                          LogEvent("lost"));
  absl::Status status = store->Commit(bad);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  absl::StatusOr<Job> got = store->Get(job->id, true);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->state, JobState::kQueued);
  EXPECT_EQ(got->history.size(), 0u);

  JobStore::WriteBatch good;
  good.Update(running).RecordMetrics(job->id, Metrics(1, 3)).AppendEvent(job->id,
                                                                           LogEvent("ok"));
  EXPECT_EQ(good.size(), 3u);
  ASSERT_TRUE(store->Commit(good).ok());
  got = store->Get(job->id, true);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->state, JobState::kRunning);
  EXPECT_EQ(got->history.size(), 1u);
  EXPECT_EQ(store->Events(job->id)->size(), 1u);
  EXPECT_TRUE(store->Commit(JobStore::WriteBatch()).ok());
}

TEST_F(JobStoreTest, ReopenKeepsEverythingAndIdsStayMonotonic) {
  std::string first_serialized;
  {
    auto store = OpenStore();
    ASSERT_NE(store, nullptr);
    absl::StatusOr<Job> a = store->Create(Spec("a"), now_);
    absl::StatusOr<Job> b = store->Create(Spec("b"), now_);
    absl::StatusOr<Job> c = store->Create(Spec("c"), now_);
    ASSERT_TRUE(a.ok() && b.ok() && c.ok());
    a->state = JobState::kRunning;
    a->attempt = 1;
    a->latest = Metrics(2, 4);
    ASSERT_TRUE(store->Update(*a).ok());
    ASSERT_TRUE(store->RecordMetrics(a->id, Metrics(1, 5)).ok());
    ASSERT_TRUE(store->RecordMetrics(a->id, Metrics(2, 4)).ok());
    ASSERT_TRUE(store->AppendEvent(a->id, LogEvent("started")).ok());
    first_serialized = AsJson(*a);
    // The newest job is deleted: its number must not come back.
    ASSERT_TRUE(store->Delete(c->id).ok());
    EXPECT_EQ(store->Get(c->id).status().code(), absl::StatusCode::kNotFound);
  }
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<Job> a = store->Get("job-000001", /*include_history=*/true);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->state, JobState::kRunning);
  EXPECT_EQ(a->attempt, 1);
  ASSERT_EQ(a->history.size(), 2u);
  EXPECT_EQ(a->history[1].loss, 4);
  a->history.clear();
  EXPECT_EQ(AsJson(*a), first_serialized);
  EXPECT_EQ(store->Events("job-000001")->size(), 1u);
  EXPECT_EQ(store->List({})->size(), 2u);
  absl::StatusOr<std::vector<Job>> running = store->List({JobState::kRunning});
  ASSERT_TRUE(running.ok());
  ASSERT_EQ(running->size(), 1u);
  EXPECT_EQ((*running)[0].id, "job-000001");

  absl::StatusOr<Job> d = store->Create(Spec("d"), now_);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->id, "job-000004");

  // Deleting a job takes its metrics and events with it.
  ASSERT_TRUE(store->Delete("job-000001").ok());
  EXPECT_EQ(store->Events("job-000001").status().code(), absl::StatusCode::kNotFound);
  store.reset();
  store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<Job> e = store->Create(Spec("e"), now_);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->id, "job-000005");
}

TEST_F(JobStoreTest, ConcurrentWritersAreSerialized) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<Job> job = store->Create(Spec("a"), now_);
  ASSERT_TRUE(job.ok());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        EXPECT_TRUE(store->RecordMetrics(job->id, Metrics(t * 10 + i + 1, t)).ok());
        EXPECT_TRUE(store->AppendEvent(job->id, LogEvent("x")).ok());
        EXPECT_TRUE(store->Create(Spec("n"), now_).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(store->History(job->id)->size(), 40u);
  EXPECT_EQ(store->Events(job->id)->size(), 40u);
  absl::StatusOr<std::vector<Job>> all = store->List({});
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 41u);
  EXPECT_EQ(all->back().id, "job-000041");
}

TEST_F(JobStoreTest, CorruptFileIsAClearError) {
  {
    std::ofstream f(path_, std::ios::binary);
    f << std::string(8192, 'x') << "this is not an SQLite database";
  }
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_TRUE(Contains(std::string(store.status().message()), path_));
  EXPECT_TRUE(Contains(std::string(store.status().message()), "not a database"));
}

TEST_F(JobStoreTest, MissingFolderIsAClearError) {
  const std::string path = (dir_ / "no" / "such" / "jobs.db").string();
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_TRUE(Contains(std::string(store.status().message()), path));
}

TEST_F(JobStoreTest, ForeignDatabaseIsRejected) {
  // A newer schema than this build knows.
  {
    auto store = OpenStore();
    ASSERT_NE(store, nullptr);
  }
  {
    // Bump user_version with a second connection through the store's own file: reopen raw.
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version=99", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(std::string(store.status().message()), "newer"));

  // Another program's database that happens to have a `jobs` table.
  const std::string other = (dir_ / "other.db").string();
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(other.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE jobs(x)", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  store = JobStore::Open(other);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_TRUE(Contains(std::string(store.status().message()), other));
}

TEST_F(JobStoreTest, AnEarlierSchemaIsLeftUntouchedWithAClearError) {
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "CREATE TABLE jobs(x); CREATE TABLE metrics(x); "
                           "CREATE TABLE events(x); PRAGMA user_version=1",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  const auto size = std::filesystem::file_size(path_);
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_TRUE(Contains(std::string(store.status().message()), "earlier tandemd"));
  EXPECT_TRUE(Contains(std::string(store.status().message()), path_));
  EXPECT_EQ(std::filesystem::file_size(path_), size);
}

}  // namespace
}  // namespace tandem

namespace tandem {
namespace {

// A damaged row with a number no record can hold (found by tests/fuzz/config_fuzz: read into an
// integer field it was undefined behaviour) is DATA_LOSS, like any other damage.
TEST(JobJsonTest, NumbersOutOfRangeAreDataLoss) {
  for (const char* row : {R"({"time": 1.7e24, "eval": {"step": 10}})",
                          R"({"time": 1, "metrics": {"step": -1e300}})"}) {
    EXPECT_EQ(JobEventFromJson(row).status().code(), absl::StatusCode::kDataLoss) << row;
  }
  EXPECT_EQ(JobFromJson(R"({"id": "job-1", "attempt": 3e19})").status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_TRUE(JobEventFromJson(R"({"time": 1, "metrics": {"step": 2, "loss": 1.5e6}})").ok());
}

}  // namespace
}  // namespace tandem

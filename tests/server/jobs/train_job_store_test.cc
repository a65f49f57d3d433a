#include "server/jobs/train_job_store.h"

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

namespace tandem {
namespace {

using tandem::v1::TrainJob;
using tandem::v1::TrainJobEvent;
using tandem::v1::TrainJobSpec;
using tandem::v1::TrainMetrics;

::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part
                                       << "\"";
}

class TrainJobStoreTest : public ::testing::Test {
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

  std::unique_ptr<TrainJobStore> OpenStore() {
    absl::StatusOr<std::unique_ptr<TrainJobStore>> store = TrainJobStore::Open(path_);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  static TrainJobSpec Spec(const std::string& name, int priority = 0) {
    TrainJobSpec spec;
    spec.set_name(name);
    spec.set_kind(tandem::v1::TRAIN_KIND_TEXT);
    spec.set_dataset("fortunes.txt");
    spec.set_priority(priority);
    spec.mutable_text_model()->set_dim(64);
    spec.mutable_text_model()->set_layers(2);
    spec.mutable_hyperparameters()->set_steps(100);
    spec.mutable_hyperparameters()->set_lr(3e-4);
    return spec;
  }

  static TrainMetrics Metrics(int64_t step, double loss) {
    TrainMetrics m;
    m.set_step(step);
    m.set_total_steps(100);
    m.set_loss(loss);
    m.set_lr(1e-3);
    m.set_grad_norm(0.5);
    return m;
  }

  static TrainJobEvent LogEvent(const std::string& text) {
    TrainJobEvent e;
    e.mutable_time()->set_seconds(1700000000);
    e.set_log(text);
    return e;
  }

  std::filesystem::path dir_;
  std::string path_;
  const absl::Time now_ = absl::FromUnixSeconds(1700000000) + absl::Milliseconds(250);
};

TEST_F(TrainJobStoreTest, CreateAssignsIdsAndDefaults) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<TrainJob> a = store->Create(Spec("a"), now_);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->id(), "job-000001");
  EXPECT_EQ(a->state(), tandem::v1::QUEUED);
  EXPECT_EQ(a->attempt(), 0);
  EXPECT_EQ(a->created().seconds(), 1700000000);
  EXPECT_EQ(a->created().nanos(), 250000000);
  EXPECT_EQ(a->spec().name(), "a");
  absl::StatusOr<TrainJob> b = store->Create(Spec("b"), now_);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->id(), "job-000002");

  absl::StatusOr<TrainJob> got = store->Get("job-000001");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->SerializeAsString(), a->SerializeAsString());
}

TEST_F(TrainJobStoreTest, TimestampBeforeEpochIsNormalized) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<TrainJob> a =
      store->Create(Spec("a"), absl::FromUnixSeconds(-1) + absl::Milliseconds(500));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->created().seconds(), -1);
  EXPECT_EQ(a->created().nanos(), 500000000);
}

TEST_F(TrainJobStoreTest, ListFiltersByStateInSubmissionOrder) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  // Priorities out of order: listing is by submission, not priority.
  std::vector<TrainJob> jobs;
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<TrainJob> job = store->Create(Spec(absl::StrCat("j", i), 5 - i), now_);
    ASSERT_TRUE(job.ok()) << job.status();
    jobs.push_back(*job);
  }
  jobs[1].set_state(tandem::v1::RUNNING);
  jobs[3].set_state(tandem::v1::RUNNING);
  jobs[4].set_state(tandem::v1::FAILED);
  for (int i : {1, 3, 4}) ASSERT_TRUE(store->Update(jobs[i]).ok());

  auto ids = [](const std::vector<TrainJob>& list) {
    std::vector<std::string> out;
    for (const auto& j : list) out.push_back(j.id());
    return out;
  };
  absl::StatusOr<std::vector<TrainJob>> all = store->List({});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(ids(*all), (std::vector<std::string>{"job-000001", "job-000002", "job-000003",
                                                 "job-000004", "job-000005"}));
  EXPECT_EQ((*all)[2].spec().name(), "j2");

  absl::StatusOr<std::vector<TrainJob>> running = store->List({tandem::v1::RUNNING});
  ASSERT_TRUE(running.ok());
  EXPECT_EQ(ids(*running), (std::vector<std::string>{"job-000002", "job-000004"}));

  absl::StatusOr<std::vector<TrainJob>> some =
      store->List({tandem::v1::FAILED, tandem::v1::QUEUED});
  ASSERT_TRUE(some.ok());
  EXPECT_EQ(ids(*some), (std::vector<std::string>{"job-000001", "job-000003", "job-000005"}));

  absl::StatusOr<std::vector<TrainJob>> none = store->List({tandem::v1::SUCCEEDED});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST_F(TrainJobStoreTest, UpdateReplacesTheRowButNotHistory) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<TrainJob> job = store->Create(Spec("a"), now_);
  ASSERT_TRUE(job.ok());
  job->set_state(tandem::v1::FAILED);
  job->set_error("out of memory");
  job->set_attempt(2);
  job->mutable_started()->set_seconds(1700000100);
  job->mutable_finished()->set_seconds(1700000200);
  *job->mutable_latest() = Metrics(42, 2.5);
  job->mutable_best_eval()->set_step(40);
  job->mutable_best_eval()->set_loss(2.75);
  job->mutable_best_eval()->set_text_sample("once upon");
  job->set_checkpoint_step(40);
  job->set_deployed_as("fortunes");
  job->set_deployed_step(40);
  job->mutable_spec()->set_priority(9);
  *job->add_history() = Metrics(1, 9.0);  // not stored: history comes from RecordMetrics
  ASSERT_TRUE(store->Update(*job).ok());

  absl::StatusOr<TrainJob> got = store->Get(job->id(), /*include_history=*/true);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->history_size(), 0);
  job->clear_history();
  EXPECT_EQ(got->SerializeAsString(), job->SerializeAsString()) << got->DebugString();
  EXPECT_EQ(got->spec().priority(), 9);

  TrainJob missing = *job;
  missing.set_id("job-000099");
  absl::Status status = store->Update(missing);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_TRUE(Contains(std::string(status.message()), "no training job \"job-000099\""));
}

TEST_F(TrainJobStoreTest, NotFound) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<TrainJob> got = store->Get("job-000001");
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

TEST_F(TrainJobStoreTest, MetricsOverwriteTheSameStepAndComeBackInStepOrder) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<TrainJob> job = store->Create(Spec("a"), now_);
  ASSERT_TRUE(job.ok());
  for (int step = 1; step <= 5; ++step) {
    ASSERT_TRUE(store->RecordMetrics(job->id(), Metrics(step, 10.0 - step)).ok());
  }
  // A crash after step 5, resumed from the checkpoint of step 3: steps 4 and 5 are re-run.
  ASSERT_TRUE(store->RecordMetrics(job->id(), Metrics(4, 1.25)).ok());
  ASSERT_TRUE(store->RecordMetrics(job->id(), Metrics(5, 1.5)).ok());
  ASSERT_TRUE(store->RecordMetrics(job->id(), Metrics(6, 1.75)).ok());

  absl::StatusOr<TrainJob> got = store->Get(job->id(), /*include_history=*/true);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->history_size(), 6);
  const std::vector<double> losses = {9, 8, 7, 1.25, 1.5, 1.75};
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(got->history(i).step(), i + 1);
    EXPECT_EQ(got->history(i).loss(), losses[i]);
  }
  absl::StatusOr<TrainJob> without = store->Get(job->id(), /*include_history=*/false);
  ASSERT_TRUE(without.ok());
  EXPECT_EQ(without->history_size(), 0);
  absl::StatusOr<std::vector<TrainMetrics>> history = store->History(job->id());
  ASSERT_TRUE(history.ok());
  EXPECT_EQ(history->size(), 6u);

  // Another job's metrics stay apart.
  absl::StatusOr<TrainJob> other = store->Create(Spec("b"), now_);
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(store->RecordMetrics(other->id(), Metrics(1, 5)).ok());
  history = store->History(other->id());
  ASSERT_TRUE(history.ok());
  ASSERT_EQ(history->size(), 1u);
  EXPECT_EQ((*history)[0].loss(), 5);
}

TEST_F(TrainJobStoreTest, EventsRoundTripInOrder) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<TrainJob> job = store->Create(Spec("a"), now_);
  ASSERT_TRUE(job.ok());
  TrainJobEvent state;
  state.mutable_time()->set_seconds(1700000001);
  state.set_state(tandem::v1::RUNNING);
  TrainJobEvent eval;
  eval.mutable_time()->set_seconds(1700000002);
  eval.mutable_eval()->set_step(100);
  eval.mutable_eval()->set_loss(2.5);
  eval.mutable_eval()->set_bits_per_byte(1.25);
  eval.mutable_eval()->set_text_sample("The end.");
  eval.mutable_eval()->set_image_sample_png(std::string("\x89PNG\0\x01", 6));
  eval.mutable_eval()->set_improved(true);
  const std::vector<TrainJobEvent> sent = {state, LogEvent("checkpoint step 100"), eval,
                                           LogEvent("deployed as fortunes")};
  for (const auto& e : sent) ASSERT_TRUE(store->AppendEvent(job->id(), e).ok());
  // Events of another job do not mix in.
  absl::StatusOr<TrainJob> other = store->Create(Spec("b"), now_);
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(store->AppendEvent(other->id(), LogEvent("other")).ok());

  absl::StatusOr<std::vector<TrainJobEvent>> got = store->Events(job->id());
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) {
    EXPECT_EQ((*got)[i].SerializeAsString(), sent[i].SerializeAsString()) << i;
  }
  absl::StatusOr<std::vector<TrainJobEvent>> none = store->Events(other->id());
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->size(), 1u);
}

TEST_F(TrainJobStoreTest, WriteBatchIsAllOrNothing) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<TrainJob> job = store->Create(Spec("a"), now_);
  ASSERT_TRUE(job.ok());
  TrainJob running = *job;
  running.set_state(tandem::v1::RUNNING);

  TrainJobStore::WriteBatch bad;
  bad.Update(running).RecordMetrics(job->id(), Metrics(1, 3)).AppendEvent("job-000077",
                                                                          LogEvent("lost"));
  absl::Status status = store->Commit(bad);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  absl::StatusOr<TrainJob> got = store->Get(job->id(), true);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->state(), tandem::v1::QUEUED);
  EXPECT_EQ(got->history_size(), 0);

  TrainJobStore::WriteBatch good;
  good.Update(running).RecordMetrics(job->id(), Metrics(1, 3)).AppendEvent(job->id(),
                                                                           LogEvent("ok"));
  EXPECT_EQ(good.size(), 3u);
  ASSERT_TRUE(store->Commit(good).ok());
  got = store->Get(job->id(), true);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->state(), tandem::v1::RUNNING);
  EXPECT_EQ(got->history_size(), 1);
  EXPECT_EQ(store->Events(job->id())->size(), 1u);
  EXPECT_TRUE(store->Commit(TrainJobStore::WriteBatch()).ok());
}

TEST_F(TrainJobStoreTest, ReopenKeepsEverythingAndIdsStayMonotonic) {
  std::string first_serialized;
  {
    auto store = OpenStore();
    ASSERT_NE(store, nullptr);
    absl::StatusOr<TrainJob> a = store->Create(Spec("a"), now_);
    absl::StatusOr<TrainJob> b = store->Create(Spec("b"), now_);
    absl::StatusOr<TrainJob> c = store->Create(Spec("c"), now_);
    ASSERT_TRUE(a.ok() && b.ok() && c.ok());
    a->set_state(tandem::v1::RUNNING);
    a->set_attempt(1);
    *a->mutable_latest() = Metrics(2, 4);
    ASSERT_TRUE(store->Update(*a).ok());
    ASSERT_TRUE(store->RecordMetrics(a->id(), Metrics(1, 5)).ok());
    ASSERT_TRUE(store->RecordMetrics(a->id(), Metrics(2, 4)).ok());
    ASSERT_TRUE(store->AppendEvent(a->id(), LogEvent("started")).ok());
    first_serialized = a->SerializeAsString();
    // The newest job is deleted: its number must not come back.
    ASSERT_TRUE(store->Delete(c->id()).ok());
    EXPECT_EQ(store->Get(c->id()).status().code(), absl::StatusCode::kNotFound);
  }
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<TrainJob> a = store->Get("job-000001", /*include_history=*/true);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->state(), tandem::v1::RUNNING);
  EXPECT_EQ(a->attempt(), 1);
  ASSERT_EQ(a->history_size(), 2);
  EXPECT_EQ(a->history(1).loss(), 4);
  a->clear_history();
  EXPECT_EQ(a->SerializeAsString(), first_serialized);
  EXPECT_EQ(store->Events("job-000001")->size(), 1u);
  EXPECT_EQ(store->List({})->size(), 2u);
  absl::StatusOr<std::vector<TrainJob>> running = store->List({tandem::v1::RUNNING});
  ASSERT_TRUE(running.ok());
  ASSERT_EQ(running->size(), 1u);
  EXPECT_EQ((*running)[0].id(), "job-000001");

  absl::StatusOr<TrainJob> d = store->Create(Spec("d"), now_);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->id(), "job-000004");

  // Deleting a job takes its metrics and events with it.
  ASSERT_TRUE(store->Delete("job-000001").ok());
  EXPECT_EQ(store->Events("job-000001").status().code(), absl::StatusCode::kNotFound);
  store.reset();
  store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<TrainJob> e = store->Create(Spec("e"), now_);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->id(), "job-000005");
}

TEST_F(TrainJobStoreTest, ConcurrentWritersAreSerialized) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<TrainJob> job = store->Create(Spec("a"), now_);
  ASSERT_TRUE(job.ok());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        EXPECT_TRUE(store->RecordMetrics(job->id(), Metrics(t * 10 + i + 1, t)).ok());
        EXPECT_TRUE(store->AppendEvent(job->id(), LogEvent("x")).ok());
        EXPECT_TRUE(store->Create(Spec("n"), now_).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(store->History(job->id())->size(), 40u);
  EXPECT_EQ(store->Events(job->id())->size(), 40u);
  absl::StatusOr<std::vector<TrainJob>> all = store->List({});
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 41u);
  EXPECT_EQ(all->back().id(), "job-000041");
}

TEST_F(TrainJobStoreTest, CorruptFileIsAClearError) {
  {
    std::ofstream f(path_, std::ios::binary);
    f << std::string(8192, 'x') << "this is not an SQLite database";
  }
  absl::StatusOr<std::unique_ptr<TrainJobStore>> store = TrainJobStore::Open(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_TRUE(Contains(std::string(store.status().message()), path_));
  EXPECT_TRUE(Contains(std::string(store.status().message()), "not a database"));
}

TEST_F(TrainJobStoreTest, MissingFolderIsAClearError) {
  const std::string path = (dir_ / "no" / "such" / "jobs.db").string();
  absl::StatusOr<std::unique_ptr<TrainJobStore>> store = TrainJobStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_TRUE(Contains(std::string(store.status().message()), path));
}

TEST_F(TrainJobStoreTest, ForeignDatabaseIsRejected) {
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
  absl::StatusOr<std::unique_ptr<TrainJobStore>> store = TrainJobStore::Open(path_);
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
  store = TrainJobStore::Open(other);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_TRUE(Contains(std::string(store.status().message()), other));
}

}  // namespace
}  // namespace tandem

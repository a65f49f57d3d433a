// The job store shared by the job threads and the RPC handlers: concurrent creations, step
// records, updates and reads through one store keep every write and give ids in a sequence.
// Run under ThreadSanitizer in CI (tests/concurrency).
#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/jobs/job_store.h"
#include "tests/testing/base/files.h"

namespace tandem {
namespace {

class JobStoreConcurrencyTest : public testing::TempDirTest {};

TEST_F(JobStoreConcurrencyTest, ConcurrentWritersAndReadersLoseNothing) {
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(Path("jobs.db"));
  ASSERT_TRUE(store.ok()) << store.status();
  constexpr int kThreads = 4, kJobsEach = 3, kSteps = 10;
  std::vector<std::thread> threads;
  std::vector<std::vector<std::string>> ids(kThreads);
  std::atomic<int> errors{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int j = 0; j < kJobsEach; ++j) {
        JobSpec spec;
        spec.name = "job";
        spec.kind = ModelKind::kText;
        spec.dataset = "d.txt";
        absl::StatusOr<Job> job = (*store)->Create(spec, absl::Now());
        if (!job.ok()) {
          ++errors;
          continue;
        }
        ids[t].push_back(job->id);
        for (int s = 1; s <= kSteps; ++s) {
          StepRecord m;
          m.step = s;
          m.loss = 1.0 / s;
          JobStore::WriteBatch batch;
          job->latest = m;
          batch.RecordMetrics(job->id, m).Update(*job);
          if (!(*store)->Commit(batch).ok()) ++errors;
          if (!(*store)->List().ok()) ++errors;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  absl::StatusOr<std::vector<Job>> all = (*store)->List();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), static_cast<size_t>(kThreads * kJobsEach));
  std::set<std::string> unique;
  for (const auto& per_thread : ids) unique.insert(per_thread.begin(), per_thread.end());
  EXPECT_EQ(unique.size(), all->size());
  for (const Job& job : *all) {
    absl::StatusOr<std::vector<StepRecord>> history = (*store)->History(job.id);
    ASSERT_TRUE(history.ok());
    EXPECT_EQ(history->size(), static_cast<size_t>(kSteps)) << job.id;
    ASSERT_TRUE(job.latest.has_value());
    EXPECT_EQ(job.latest->step, kSteps);
  }
}

}  // namespace
}  // namespace tandem

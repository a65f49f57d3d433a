// JobMetrics: a run's series with their values (the MFU from the model's FLOPs per token), and
// none left once the run is over.
#include "server/jobs/job_metrics.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "gtest/gtest.h"
#include "tests/testing/base/tiny_configs.h"

namespace tandem {
namespace {

// The value of the series `head` (name and labels) in `body`, or -1.
double Value(const std::string& body, const std::string& head) {
  const size_t at = body.find("\n" + head + " ");
  if (at == std::string::npos) return -1;
  const size_t start = at + head.size() + 2;
  double v = -1;
  EXPECT_TRUE(absl::SimpleAtod(body.substr(start, body.find('\n', start) - start), &v));
  return v;
}

TEST(JobMetricsTest, SeriesOfARunWithTheMfuAndNoneAfterIt) {
  Metrics metrics;
  TrainOptions train;
  train.job_id = "job-000007";
  train.kind = ModelKind::kText;
  train.llama = testing::LlamaShape({});
  ASSERT_TRUE(train.llama.Normalize().ok());
  double forward = 0;
  for (int pos = 0; pos < train.llama.seq_len; ++pos) forward += train.llama.FlopsPerToken(pos);
  const double flops_per_token = 3 * forward / train.llama.seq_len;
  const double peak = DevicePeakFlops("cpu", 2e9, &metrics);
  EXPECT_EQ(peak, 2e9);
  {
    JobMetrics job(&metrics, train, peak);
    job.Started(10, 100);
    StepMetrics m;
    m.step = 11;
    m.loss = 2.5;
    m.lr = 1e-3;
    m.tokens = 4096;
    job.Step(m, 0.5);
    EvalMetrics ev;
    ev.loss = 2.75;
    ev.bits_per_byte = 1.25;
    job.Evaluated(ev);
    job.Checkpointed(0.125, 123456);
    const std::string body = "\n" + metrics.Serialize();
    const std::string j = "{job_id=\"job-000007\"}";
    EXPECT_EQ(Value(body, "tandem_train_step" + j), 11);
    EXPECT_EQ(Value(body, "tandem_train_target_steps" + j), 100);
    EXPECT_EQ(Value(body, "tandem_train_loss" + j), 2.5);
    EXPECT_EQ(Value(body, "tandem_train_eval_loss" + j), 2.75);
    EXPECT_EQ(Value(body, "tandem_train_eval_bpb" + j), 1.25);
    EXPECT_EQ(Value(body, "tandem_train_checkpoint_write_seconds" + j), 0.125);
    EXPECT_EQ(Value(body, "tandem_train_checkpoint_size_bytes" + j), 123456);
    EXPECT_EQ(Value(body, "tandem_train_items_total{job_id=\"job-000007\",unit=\"tokens\"}"),
              4096);
    EXPECT_NEAR(Value(body, "tandem_train_mfu_ratio" + j), 4096 * flops_per_token / 0.5 / 2e9,
                1e-9);
    EXPECT_EQ(Value(body, "tandem_device_peak_flops{device=\"cpu\"}"), 2e9);
    EXPECT_GT(Value(body, "tandem_train_last_progress_timestamp_seconds" + j), 1.7e9);
  }
  EXPECT_FALSE(absl::StrContains(metrics.Serialize(), "job-000007"));
}

TEST(JobMetricsTest, ImageJobsHaveNoMfu) {
  Metrics metrics;
  TrainOptions train;
  train.job_id = "job-000008";
  train.kind = ModelKind::kImage;
  JobMetrics job(&metrics, train, 2e9);
  StepMetrics m;
  m.step = 1;
  m.images = 32;
  job.Step(m, 0.5);
  const std::string body = metrics.Serialize();
  EXPECT_TRUE(absl::StrContains(body, "tandem_train_items_total{job_id=\"job-000008\",unit=\"images\"} 32"));
  EXPECT_FALSE(absl::StrContains(body, "tandem_train_mfu_ratio{"));
}

}  // namespace
}  // namespace tandem

#include "client/train_format.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/testing/base/matchers.h"

namespace tandem::client {
namespace {

using tandem::v1::TrainJob;
using tandem::v1::TrainJobSpec;
using tandem::v1::TrainMetrics;

using testing::Contains;

TEST(TrainSpecJson, ParsesProtoAndCamelCaseNamesAndEnums) {
  absl::StatusOr<TrainJobSpec> spec = ParseTrainJobSpecJson(R"({
      "name": "fortunes-small", "kind": "TRAIN_KIND_TEXT", "dataset": "fortunes.txt",
      "text_model": {"dim": 64, "layers": 2, "vocabSize": 512},
      "hyperparameters": {"steps": "1000", "lr": 0.001, "batch_size": 8},
      "deployAs": "fortunes", "deploy_on_improvement": true})",
                                                            "job.json");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name(), "fortunes-small");
  EXPECT_EQ(spec->kind(), tandem::v1::TRAIN_KIND_TEXT);
  EXPECT_EQ(spec->text_model().dim(), 64);
  EXPECT_EQ(spec->text_model().vocab_size(), 512);
  EXPECT_EQ(spec->hyperparameters().steps(), 1000);
  EXPECT_EQ(spec->hyperparameters().batch_size(), 8);
  EXPECT_EQ(spec->deploy_as(), "fortunes");
  EXPECT_TRUE(spec->deploy_on_improvement());
}

TEST(TrainSpecJson, ErrorsNameTheFileAndTheProblem) {
  absl::StatusOr<TrainJobSpec> spec = ParseTrainJobSpecJson(R"({"nmae": "x"})", "job.json");
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(spec.status().message()), "job.json"));
  EXPECT_TRUE(Contains(std::string(spec.status().message()), "nmae"));

  spec = ParseTrainJobSpecJson("{\"name\": ", "broken.json");
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(Contains(std::string(spec.status().message()), "broken.json"));
  spec = ParseTrainJobSpecJson(R"({"kind": "TRAIN_KIND_AUDIO"})", "k.json");
  ASSERT_FALSE(spec.ok());
}

TEST(TrainSpecFlagsTest, OnlyGivenFlagsAreSetAndOverrideTheFile) {
  TrainJobSpec spec;
  spec.set_name("from-file");
  spec.set_dataset("a.txt");
  spec.mutable_hyperparameters()->set_steps(500);
  spec.mutable_hyperparameters()->set_lr(1e-3);
  spec.mutable_text_model()->set_dim(64);
  spec.mutable_text_model()->set_layers(4);

  TrainSpecFlags f;
  f.name = "from-flags";
  f.lr = 3e-4;
  f.layers = 6;
  f.seed = 7;
  f.dropout = 0.1;
  f.optimizer = "muon";
  f.precision = "bf16-mixed";
  f.deploy_on_improvement = false;  // given, even though false
  ASSERT_TRUE(ApplyTrainSpecFlags(f, &spec).ok());
  EXPECT_EQ(spec.name(), "from-flags");
  EXPECT_EQ(spec.dataset(), "a.txt");
  EXPECT_EQ(spec.kind(), tandem::v1::TRAIN_KIND_TEXT);  // from the model config
  EXPECT_EQ(spec.hyperparameters().steps(), 500);
  EXPECT_DOUBLE_EQ(spec.hyperparameters().lr(), 3e-4);
  EXPECT_EQ(spec.hyperparameters().seed(), 7u);
  EXPECT_DOUBLE_EQ(spec.hyperparameters().dropout(), 0.1);
  EXPECT_EQ(spec.hyperparameters().optimizer(), "muon");
  EXPECT_EQ(spec.hyperparameters().precision(), "bf16-mixed");
  EXPECT_EQ(spec.text_model().dim(), 64);
  EXPECT_EQ(spec.text_model().layers(), 6);
  EXPECT_FALSE(spec.deploy_on_improvement());
}

TEST(TrainSpecFlagsTest, NoFlagsLeaveTheSpecAlone) {
  TrainJobSpec spec;
  spec.set_init_from("fortunes");
  ASSERT_TRUE(ApplyTrainSpecFlags(TrainSpecFlags(), &spec).ok());
  EXPECT_FALSE(spec.has_hyperparameters());
  EXPECT_FALSE(spec.has_text_model());
  EXPECT_FALSE(spec.has_image_model());
  EXPECT_EQ(spec.kind(), tandem::v1::TRAIN_KIND_UNSPECIFIED);
}

TEST(TrainSpecFlagsTest, ImageFlagsBuildAnImageModel) {
  TrainJobSpec spec;
  TrainSpecFlags f;
  f.kind = "image";
  f.image_size = 28;
  f.channels = 1;
  f.unet_widths = "32, 64,128";
  f.attention_levels = "1,2";
  f.vocab_size = 256;
  f.caption_dropout = 0.1;
  ASSERT_TRUE(ApplyTrainSpecFlags(f, &spec).ok());
  EXPECT_EQ(spec.kind(), tandem::v1::TRAIN_KIND_IMAGE);
  ASSERT_TRUE(spec.has_image_model());
  EXPECT_EQ(spec.image_model().image_size(), 28);
  ASSERT_EQ(spec.image_model().unet_widths_size(), 3);
  EXPECT_EQ(spec.image_model().unet_widths(2), 128);
  ASSERT_EQ(spec.image_model().attention_levels_size(), 2);
  EXPECT_EQ(spec.image_model().vocab_size(), 256);
  EXPECT_DOUBLE_EQ(spec.hyperparameters().caption_dropout(), 0.1);

  // The kind is inferred from image flags alone.
  TrainJobSpec inferred;
  TrainSpecFlags g;
  g.image_size = 32;
  ASSERT_TRUE(ApplyTrainSpecFlags(g, &inferred).ok());
  EXPECT_EQ(inferred.kind(), tandem::v1::TRAIN_KIND_IMAGE);
}

TEST(TrainSpecFlagsTest, KindConflictsAreErrors) {
  {
    TrainJobSpec spec;
    TrainSpecFlags f;
    f.kind = "text";
    f.image_size = 28;
    absl::Status s = ApplyTrainSpecFlags(f, &spec);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(std::string(s.message()), "--image_size"));
  }
  {
    TrainJobSpec spec;
    TrainSpecFlags f;
    f.layers = 2;
    f.channels = 3;
    absl::Status s = ApplyTrainSpecFlags(f, &spec);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(std::string(s.message()), "--kind"));
  }
  {
    TrainJobSpec spec;
    spec.mutable_image_model()->set_image_size(28);
    TrainSpecFlags f;
    f.kind = "text";
    EXPECT_EQ(ApplyTrainSpecFlags(f, &spec).code(), absl::StatusCode::kInvalidArgument);
  }
  {
    TrainJobSpec spec;
    TrainSpecFlags f;
    f.kind = "audio";
    absl::Status s = ApplyTrainSpecFlags(f, &spec);
    EXPECT_TRUE(Contains(std::string(s.message()), "text or image"));
  }
  {
    TrainJobSpec spec;
    TrainSpecFlags f;
    f.vocab_size = 512;
    EXPECT_EQ(ApplyTrainSpecFlags(f, &spec).code(), absl::StatusCode::kInvalidArgument);
  }
  {
    TrainJobSpec spec;
    TrainSpecFlags f;
    f.kind = "image";
    f.unet_widths = "32,x";
    absl::Status s = ApplyTrainSpecFlags(f, &spec);
    EXPECT_TRUE(Contains(std::string(s.message()), "--unet_widths"));
  }
}

TEST(TrainNames, States) {
  absl::StatusOr<std::vector<tandem::v1::TrainJobState>> states =
      ParseStateList("running, Queued,CANCELED,running");
  ASSERT_TRUE(states.ok()) << states.status();
  EXPECT_EQ(*states, (std::vector<tandem::v1::TrainJobState>{
                         tandem::v1::RUNNING, tandem::v1::QUEUED, tandem::v1::CANCELLED}));
  EXPECT_TRUE(ParseStateList("")->empty());
  absl::StatusOr<std::vector<tandem::v1::TrainJobState>> bad = ParseStateList("running,done");
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(Contains(std::string(bad.status().message()), "\"done\""));
  EXPECT_FALSE(ParseStateList("train_job_state_unspecified").ok());
  EXPECT_EQ(StateName(tandem::v1::PAUSED), "PAUSED");
  EXPECT_EQ(KindName(tandem::v1::TRAIN_KIND_IMAGE), "image");
  EXPECT_TRUE(IsFinalState(tandem::v1::FAILED));
  EXPECT_FALSE(IsFinalState(tandem::v1::PAUSED));
}

TEST(TrainFormat, Durations) {
  EXPECT_EQ(FormatDuration(0), "0s");
  EXPECT_EQ(FormatDuration(42.4), "42s");
  EXPECT_EQ(FormatDuration(59.6), "1m00s");
  EXPECT_EQ(FormatDuration(185), "3m05s");
  EXPECT_EQ(FormatDuration(3720), "1h02m");
  EXPECT_EQ(FormatDuration(2 * 86400 + 3 * 3600 + 59), "2d03h");
  EXPECT_EQ(FormatDuration(-1), "?");
  EXPECT_EQ(FormatDuration(std::numeric_limits<double>::infinity()), "?");
  EXPECT_EQ(FormatDuration(std::nan("")), "?");
}

TEST(TrainFormat, Rates) {
  EXPECT_EQ(FormatRate(3.456, "img/s"), "3.46 img/s");
  EXPECT_EQ(FormatRate(42.25, "img/s"), "42.2 img/s");
  EXPECT_EQ(FormatRate(950, "tok/s"), "950 tok/s");
  EXPECT_EQ(FormatRate(1234, "tok/s"), "1.23k tok/s");
  EXPECT_EQ(FormatRate(45600, "tok/s"), "45.6k tok/s");
  EXPECT_EQ(FormatRate(2.5e6, "tok/s"), "2.50M tok/s");
}

TrainMetrics Metrics() {
  TrainMetrics m;
  m.set_step(120);
  m.set_total_steps(1000);
  m.set_loss(3.41204);
  m.set_lr(3e-4);
  m.set_tokens_per_second(1234);
  m.set_eta_seconds(252);
  return m;
}

TEST(TrainFormat, ProgressLine) {
  EXPECT_EQ(FormatProgressLine(Metrics(), tandem::v1::TRAIN_KIND_TEXT, 10),
            "step 120/1000 [#.........]  12% \xC2\xB7 loss 3.4120 \xC2\xB7 lr 3.00e-04 \xC2\xB7 "
            "1.23k tok/s \xC2\xB7 ETA 4m12s");
  // No bar; images.
  TrainMetrics m = Metrics();
  m.set_tokens_per_second(0);
  m.set_images_per_second(56.5);
  EXPECT_EQ(FormatProgressLine(m, tandem::v1::TRAIN_KIND_IMAGE, 0),
            "step 120/1000  12% \xC2\xB7 loss 3.4120 \xC2\xB7 lr 3.00e-04 \xC2\xB7 56.5 img/s "
            "\xC2\xB7 ETA 4m12s");
  // Done: a full bar and no ETA.
  m = Metrics();
  m.set_step(1000);
  const std::string done = FormatProgressLine(m, tandem::v1::TRAIN_KIND_TEXT, 4);
  EXPECT_TRUE(Contains(done, "[####] 100%"));
  EXPECT_FALSE(Contains(done, "ETA"));
  // No total known.
  m.set_total_steps(0);
  EXPECT_TRUE(
      Contains(FormatProgressLine(m, tandem::v1::TRAIN_KIND_TEXT, 10), "step 1000 \xC2\xB7"));
}

TEST(TrainFormat, ProgressLineFitsTheTerminal) {
  for (int columns : {200, 100, 80, 60, 40, 20}) {
    const std::string line = FitProgressLine(Metrics(), tandem::v1::TRAIN_KIND_TEXT, columns);
    EXPECT_LE(DisplayWidth(line), static_cast<size_t>(columns - 1)) << columns << ": " << line;
    EXPECT_TRUE(Contains(line, "step 120/1000")) << line;
  }
  EXPECT_TRUE(Contains(FitProgressLine(Metrics(), tandem::v1::TRAIN_KIND_TEXT, 200),
                       "[##..................]"));
  EXPECT_FALSE(Contains(FitProgressLine(Metrics(), tandem::v1::TRAIN_KIND_TEXT, 60), "["));
  EXPECT_EQ(DisplayWidth("a \xC2\xB7 b"), 5u);
}

TEST(TrainFormat, EvalAndSamples) {
  tandem::v1::EvalResult e;
  e.set_step(500);
  e.set_loss(2.345);
  e.set_bits_per_byte(1.234);
  e.set_improved(true);
  EXPECT_EQ(FormatEvalLine(e),
            "eval step 500: loss 2.3450 \xC2\xB7 1.2340 bits/byte \xC2\xB7 improved");
  e.set_bits_per_byte(0);
  e.set_improved(false);
  EXPECT_EQ(FormatEvalLine(e), "eval step 500: loss 2.3450");
  EXPECT_EQ(IndentSample("one\ntwo\n"), "  | one\n  | two\n");
  EXPECT_EQ(SamplePath(".", "job-000001", 500), "./job-000001-step500.png");
  EXPECT_EQ(SamplePath("out/", "job-000001", 5), "out/job-000001-step5.png");
  EXPECT_EQ(SamplePath("", "job-000002", 7), "job-000002-step7.png");
}

TrainJob SampleJob() {
  TrainJob job;
  job.set_id("job-000001");
  job.set_state(tandem::v1::RUNNING);
  job.set_attempt(2);
  auto* spec = job.mutable_spec();
  spec->set_name("fortunes-small");
  spec->set_kind(tandem::v1::TRAIN_KIND_TEXT);
  spec->set_dataset("fortunes.txt");
  spec->mutable_text_model()->set_dim(64);
  spec->mutable_text_model()->set_layers(2);
  spec->mutable_hyperparameters()->set_steps(1000);
  spec->mutable_hyperparameters()->set_lr(0.001);
  spec->set_deploy_as("fortunes");
  *job.mutable_latest() = Metrics();
  job.mutable_latest()->set_grad_norm(0.75);
  job.mutable_best_eval()->set_step(100);
  job.mutable_best_eval()->set_loss(3.5);
  job.mutable_best_eval()->set_text_sample("Once upon");
  job.set_checkpoint_step(100);
  job.set_deployed_as("fortunes");
  job.set_deployed_step(100);
  job.mutable_created()->set_seconds(1700000000);
  job.mutable_started()->set_seconds(1700000010);
  return job;
}

TEST(TrainFormat, JobTable) {
  TrainJob queued;
  queued.set_id("job-000002");
  queued.set_state(tandem::v1::QUEUED);
  queued.mutable_spec()->set_kind(tandem::v1::TRAIN_KIND_IMAGE);
  queued.mutable_spec()->mutable_hyperparameters()->set_steps(50);
  EXPECT_EQ(FormatJobTable({SampleJob(), queued}),
            "ID          NAME            KIND   STATE    STEP      LOSS    DEPLOYED\n"
            "job-000001  fortunes-small  text   RUNNING  120/1000  3.4120  fortunes@100\n"
            "job-000002  -               image  QUEUED   0/50      -       -\n");
}

TEST(TrainFormat, JobDetails) {
  const std::string text = FormatJobDetails(SampleJob(), absl::UTCTimeZone());
  EXPECT_TRUE(Contains(text, "job-000001  fortunes-small\n")) << text;
  EXPECT_TRUE(Contains(text, "RUNNING (attempt 2)")) << text;
  EXPECT_TRUE(Contains(text, "dataset fortunes.txt")) << text;
  EXPECT_TRUE(Contains(text, "dim 64 \xC2\xB7 layers 2")) << text;
  EXPECT_TRUE(Contains(text, "steps 1000 \xC2\xB7 lr 0.001")) << text;
  EXPECT_TRUE(Contains(text, "created 2023-11-14 22:13:20")) << text;
  EXPECT_TRUE(Contains(text, "grad_norm 0.750")) << text;
  EXPECT_TRUE(Contains(text, "best eval   step 100: loss 3.5000")) << text;
  EXPECT_TRUE(Contains(text, "  | Once upon")) << text;
  EXPECT_TRUE(Contains(text, "checkpoint  step 100")) << text;
  EXPECT_TRUE(Contains(text, "deployed    fortunes at step 100")) << text;
  EXPECT_FALSE(Contains(text, "error")) << text;

  TrainJob failed = SampleJob();
  failed.set_state(tandem::v1::FAILED);
  failed.set_error("dataset not found");
  failed.mutable_finished()->set_seconds(1700000010 + 185);
  const std::string f = FormatJobDetails(failed, absl::UTCTimeZone());
  EXPECT_TRUE(Contains(f, "error       dataset not found")) << f;
  EXPECT_TRUE(Contains(f, "(3m05s)")) << f;
}

TEST(TrainFormat, History) {
  TrainJob job;
  for (int i = 1; i <= 2; ++i) {
    TrainMetrics* m = job.add_history();
    m->set_step(i);
    m->set_loss(5.0 / i);
    m->set_lr(1e-4 * i);
    m->set_grad_norm(0.5);
  }
  EXPECT_EQ(FormatHistory(job), "step loss lr grad_norm\n1 5 0.0001 0.5\n2 2.5 0.0002 0.5\n");
}

}  // namespace
}  // namespace tandem::client

// Training checkpoints on disk (trainer/checkpoint.h): the exact round trip, the listing order,
// detection of truncated, corrupt and incomplete checkpoints, falling back to the newest good one,
// pruning, and replacing a checkpoint of the same step.
#include "trainer/checkpoint.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "models/formats/safetensors.h"
#include "models/model_dir.h"
#include "tests/testing/base/files.h"
#include "tests/testing/base/matchers.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

using testing::Contains;

// A checkpoint whose every value depends on `step` and `salt`.
Checkpoint MakeCheckpoint(int64_t step, float salt = 0) {
  Checkpoint c;
  c.step = step;
  std::vector<float> w(6), b(3), m(6);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(step) * 0.5f + i + salt;
  for (size_t i = 0; i < b.size(); ++i) b[i] = -static_cast<float>(i) - salt;
  for (size_t i = 0; i < m.size(); ++i) m[i] = 1e-3f * static_cast<float>(i + step) + salt;
  c.model["layer.weight"] = TensorData::F32({2, 3}, w.data());
  c.model["layer.bias"] = TensorData::F32({3}, b.data());
  TensorData half;
  half.dtype = DType::kBF16;
  half.shape = {2};
  half.bytes = std::string("\x80\x3f\x00\x40", 4);  // 1.0, 2.0
  c.model["scale"] = half;
  c.optimizer["m.layer.weight"] = TensorData::F32({2, 3}, m.data());
  c.optimizer["v.layer.weight"] = TensorData::F32({2, 3}, w.data());
  c.state = {{"kind", "text"},
             {"seed", "7"},
             {"step", absl::StrCat(step)},
             {"data_position", "step 3 of a counter-based stream"},
             {"odd", "quotes \" and\nnewlines and ünïcode"}};
  return c;
}

void ExpectSameTensors(const TensorMap& got, const TensorMap& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, t] : want) {
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << name;
    EXPECT_EQ(it->second.dtype, t.dtype) << name;
    EXPECT_EQ(it->second.shape, t.shape) << name;
    EXPECT_EQ(it->second.bytes, t.bytes) << name;  // bit-exact
  }
}

// dir_ does not exist at the start of a test: WriteCheckpoint creates it.
class CheckpointTest : public testing::TempDirTest {
 protected:
  CheckpointTest() : TempDirTest(/*create_dir=*/false) {}

  std::string Folder(const std::string& name) const { return dir_ + "/" + name; }
  void Write(int64_t step, float salt = 0) {
    ASSERT_TRUE(WriteCheckpoint(dir_, MakeCheckpoint(step, salt)).ok()) << step;
  }
};

TEST_F(CheckpointTest, RoundTripIsExact) {
  const Checkpoint want = MakeCheckpoint(7);
  ASSERT_TRUE(WriteCheckpoint(dir_, want).ok());  // creates dir_
  EXPECT_TRUE(fs::exists(Folder("step-0000000007/manifest.json")));
  EXPECT_TRUE(fs::exists(Folder("step-0000000007/model.safetensors")));
  EXPECT_TRUE(fs::exists(Folder("step-0000000007/optimizer.safetensors")));
  absl::StatusOr<Checkpoint> got = ReadCheckpoint(Folder("step-0000000007"));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->step, 7);
  ExpectSameTensors(got->model, want.model);
  ExpectSameTensors(got->optimizer, want.optimizer);
  EXPECT_EQ(got->state, want.state);
  // Nothing left behind but the checkpoint itself.
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"step-0000000007"});
}

TEST_F(CheckpointTest, EmptyCheckpointRoundTrips) {
  Checkpoint empty;
  empty.step = 0;
  ASSERT_TRUE(WriteCheckpoint(dir_, empty).ok());
  absl::StatusOr<Checkpoint> got = ReadCheckpoint(Folder("step-0000000000"));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->step, 0);
  EXPECT_TRUE(got->model.empty());
  EXPECT_TRUE(got->optimizer.empty());
  EXPECT_TRUE(got->state.empty());
}

TEST_F(CheckpointTest, ListCheckpointStepsIsAscendingAndIgnoresOtherEntries) {
  EXPECT_TRUE(ListCheckpointSteps(dir_).empty());  // no folder at all
  // Written out of order; the last one needs more than the 10 digits of the folder names.
  const std::vector<int64_t> steps = {30, 2, 10, 12345678901};
  for (int64_t step : steps) Write(step);
  fs::create_directories(Folder(".tmp-step-0000000040.99"));
  fs::create_directories(Folder("step-abc"));
  fs::create_directories(Folder("other"));
  std::ofstream(Folder("notes.txt")) << "not a checkpoint\n";
  EXPECT_EQ(ListCheckpointSteps(dir_), (std::vector<int64_t>{2, 10, 30, 12345678901}));
  // Incomplete folders are listed too (loading decides what is usable).
  fs::create_directories(Folder("step-0000000050"));
  EXPECT_EQ(ListCheckpointSteps(dir_), (std::vector<int64_t>{2, 10, 30, 50, 12345678901}));
}

TEST_F(CheckpointTest, TruncatedFileIsDataLoss) {
  Write(3);
  const std::string path = Folder("step-0000000003/model.safetensors");
  const std::string bytes = *ReadFile(path);
  ASSERT_TRUE(WriteFileAtomically(path, bytes.substr(0, bytes.size() - 10)).ok());
  absl::StatusOr<Checkpoint> got = ReadCheckpoint(Folder("step-0000000003"));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(got.status().message()), "truncated"));
}

TEST_F(CheckpointTest, FlippedByteFailsTheChecksum) {
  Write(3);
  const std::string path = Folder("step-0000000003/optimizer.safetensors");
  std::string bytes = *ReadFile(path);
  bytes[bytes.size() - 1] ^= 0x01;
  ASSERT_TRUE(WriteFileAtomically(path, bytes).ok());
  absl::StatusOr<Checkpoint> got = ReadCheckpoint(Folder("step-0000000003"));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(got.status().message()), "CRC-32"));
}

TEST_F(CheckpointTest, MissingOrMalformedManifestIsDataLoss) {
  Write(4);
  Write(5);
  fs::remove(Folder("step-0000000004/manifest.json"));
  absl::StatusOr<Checkpoint> got = ReadCheckpoint(Folder("step-0000000004"));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(got.status().message()), "incomplete"));
  ASSERT_TRUE(WriteFileAtomically(Folder("step-0000000005/manifest.json"), "{\"step\": ").ok());
  EXPECT_EQ(ReadCheckpoint(Folder("step-0000000005")).status().code(),
            absl::StatusCode::kDataLoss);
  // A missing data file.
  Write(6);
  fs::remove(Folder("step-0000000006/model.safetensors"));
  EXPECT_EQ(ReadCheckpoint(Folder("step-0000000006")).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST_F(CheckpointTest, LoadLatestSkipsAnIncompleteNewestCheckpoint) {
  Write(1);
  Write(2);
  // A crash mid-write under another writer: the folder exists, the manifest does not.
  fs::create_directories(Folder("step-0000000003"));
  std::ofstream(Folder("step-0000000003/model.safetensors")) << "partial";
  std::vector<std::string> skipped;
  absl::StatusOr<Checkpoint> got = LoadLatestCheckpoint(dir_, &skipped);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->step, 2);
  ExpectSameTensors(got->model, MakeCheckpoint(2).model);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_TRUE(Contains(skipped[0], "step-0000000003"));
  EXPECT_TRUE(Contains(skipped[0], "incomplete"));
}

TEST_F(CheckpointTest, LoadLatestFallsBackPastCorruptOnesAndReportsThem) {
  for (int64_t step : {10, 20, 30}) Write(step);
  // 30: a flipped byte; 20: truncated. 10 is the newest good one.
  std::string bytes = *ReadFile(Folder("step-0000000030/model.safetensors"));
  bytes[bytes.size() / 2] ^= 0x40;
  ASSERT_TRUE(WriteFileAtomically(Folder("step-0000000030/model.safetensors"), bytes).ok());
  bytes = *ReadFile(Folder("step-0000000020/optimizer.safetensors"));
  ASSERT_TRUE(WriteFileAtomically(Folder("step-0000000020/optimizer.safetensors"),
                                  bytes.substr(0, 16))
                  .ok());
  std::vector<std::string> skipped;
  absl::StatusOr<Checkpoint> got = LoadLatestCheckpoint(dir_, &skipped);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->step, 10);
  EXPECT_EQ(got->state.at("step"), "10");
  ASSERT_EQ(skipped.size(), 2u);  // newest first
  EXPECT_TRUE(Contains(skipped[0], "step-0000000030"));
  EXPECT_TRUE(Contains(skipped[0], "CRC-32"));
  EXPECT_TRUE(Contains(skipped[1], "step-0000000020"));
  EXPECT_TRUE(Contains(skipped[1], "truncated"));
  // `skipped` may be null.
  absl::StatusOr<Checkpoint> again = LoadLatestCheckpoint(dir_, nullptr);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->step, 10);
}

TEST_F(CheckpointTest, LoadLatestIsNotFoundWithoutAUsableCheckpoint) {
  std::vector<std::string> skipped;
  EXPECT_EQ(LoadLatestCheckpoint(dir_, &skipped).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(skipped.empty());
  fs::create_directories(Folder("step-0000000001"));  // incomplete
  EXPECT_EQ(LoadLatestCheckpoint(dir_, &skipped).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(skipped.size(), 1u);
}

TEST_F(CheckpointTest, PruneKeepsTheNewestAndRemovesTemporaryLeftovers) {
  for (int64_t step = 1; step <= 5; ++step) Write(step);
  // A writer killed before its rename leaves a temporary folder.
  fs::create_directories(Folder(".tmp-step-0000000006.4242"));
  std::ofstream(Folder(".tmp-step-0000000006.4242/model.safetensors")) << "partial";
  ASSERT_TRUE(PruneCheckpoints(dir_, 2).ok());
  EXPECT_EQ(ListCheckpointSteps(dir_), (std::vector<int64_t>{4, 5}));
  EXPECT_FALSE(fs::exists(Folder(".tmp-step-0000000006.4242")));
  EXPECT_TRUE(ReadCheckpoint(Folder("step-0000000005")).ok());
  // keep < 1 still keeps the newest.
  ASSERT_TRUE(PruneCheckpoints(dir_, 0).ok());
  EXPECT_EQ(ListCheckpointSteps(dir_), (std::vector<int64_t>{5}));
  // Keeping more than there are deletes nothing.
  ASSERT_TRUE(PruneCheckpoints(dir_, 10).ok());
  EXPECT_EQ(ListCheckpointSteps(dir_), (std::vector<int64_t>{5}));
}

TEST_F(CheckpointTest, RewritingAStepReplacesIt) {
  Write(8, /*salt=*/0);
  Write(8, /*salt=*/100);  // a re-run of step 8 after a crash
  EXPECT_EQ(ListCheckpointSteps(dir_), (std::vector<int64_t>{8}));
  absl::StatusOr<Checkpoint> got = ReadCheckpoint(Folder("step-0000000008"));
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameTensors(got->model, MakeCheckpoint(8, 100).model);
  ExpectSameTensors(got->optimizer, MakeCheckpoint(8, 100).optimizer);
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir_)) {
    ++entries;
    EXPECT_EQ(e.path().filename().string(), "step-0000000008");
  }
  EXPECT_EQ(entries, 1);
}

}  // namespace
}  // namespace tandem

#include "server/core/chunk_calibration.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "absl/status/status.h"

namespace tandem {
namespace {

// A fake chunk: `fixed` seconds plus `per_row` a row, the first `slow_rows` rows costing
// `slow` each instead (a CPU that idles its cores on small chunks), and a size's first run
// `first_run` more (kernels built for new shapes), recording each probe.
struct FakeChunk {
  double fixed = 0.01, per_row = 0.01, slow = 0.01, first_run = 0;
  int slow_rows = 0;
  std::vector<int> probed;
  absl::StatusOr<double> operator()(int rows) {
    const bool first = std::find(probed.begin(), probed.end(), rows) == probed.end();
    probed.push_back(rows);
    const int slow_part = std::min(rows, slow_rows);
    return fixed + slow_part * slow + (rows - slow_part) * per_row + (first ? first_run : 0);
  }
};

ChunkCalibration Choose(int batch, double target, FakeChunk* fake) {
  absl::StatusOr<ChunkCalibration> c =
      ChooseChunkRows(batch, target, [fake](int rows) { return (*fake)(rows); });
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ChunkCalibration{};
}

TEST(ChunkCalibrationTest, TheWholeBatchWhenItFits) {
  FakeChunk fake;  // 32 rows: 0.33 s
  const ChunkCalibration c = Choose(32, 0.5, &fake);
  EXPECT_EQ(c.rows, 32);
  EXPECT_EQ(fake.probed, (std::vector<int>{1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32}));
  EXPECT_NEAR(c.seconds_per_row, 0.33 / 32, 1e-12);
}

TEST(ChunkCalibrationTest, StopsProbingPastTheTargetAndEvensTheChunks) {
  FakeChunk fake;  // t(r) = 0.01 + 0.01 r: 0.25 s at 24 rows
  const ChunkCalibration c = Choose(32, 0.25, &fake);
  EXPECT_EQ(fake.probed, (std::vector<int>{1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32}));
  // Linear between 16 (0.17 s) and 32 (0.33 s): 24 rows fit; 32 rows in two chunks of 16.
  EXPECT_EQ(c.rows, 16);
  FakeChunk again;
  EXPECT_EQ(Choose(48, 0.25, &again).rows, 24);  // 48 = 2 x 24: exactly the fitting size
  EXPECT_EQ(again.probed,
            (std::vector<int>{1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32}));  // none after 32
}

// The case a straight line through 1 and 4 rows gets wrong: small chunks cost three times more
// a row than large ones, so extrapolating from them picks chunks far below what fits.
TEST(ChunkCalibrationTest, SmallChunksBeingSlowerDoesNotShrinkTheChoice) {
  FakeChunk fake;
  fake.slow = 0.03;
  fake.slow_rows = 4;  // t(4) = 0.13 s: 0.03 s a row; past 4 rows 0.01 s a row
  const ChunkCalibration c = Choose(32, 0.30, &fake);
  // t(16) = 0.25, t(32) = 0.41: 19 rows fit; 32 rows in two chunks of 16.
  EXPECT_EQ(c.rows, 16);
  EXPECT_NEAR(c.seconds_per_row, 0.25 / 16, 1e-12);
}

// The case a single run per size gets wrong: each size's first run costs 0.1 s more (oneDNN
// building its kernels for the new shapes), which would put 16 rows over the target.
TEST(ChunkCalibrationTest, ASizesFirstRunCostDoesNotShrinkTheChoice) {
  FakeChunk fake;  // t(r) = 0.01 + 0.01 r warm: 0.17 s at 16 rows, 0.27 s the first time
  fake.first_run = 0.1;
  const ChunkCalibration c = Choose(16, 0.25, &fake);
  EXPECT_EQ(c.rows, 16);
  EXPECT_NEAR(c.seconds_per_row, 0.17 / 16, 1e-12);
}

TEST(ChunkCalibrationTest, OneRowWhenEvenOneIsOverTheTarget) {
  FakeChunk fake;
  fake.fixed = 1.0;
  const ChunkCalibration c = Choose(16, 0.25, &fake);
  EXPECT_EQ(c.rows, 1);
  EXPECT_EQ(fake.probed, (std::vector<int>{1, 1}));
}

TEST(ChunkCalibrationTest, BatchesThatAreNotPowersOfTwoAreProbedWhole) {
  FakeChunk fake;
  EXPECT_EQ(Choose(12, 10.0, &fake).rows, 12);
  EXPECT_EQ(fake.probed, (std::vector<int>{1, 1, 2, 2, 4, 4, 8, 8, 12, 12}));
  FakeChunk one;
  EXPECT_EQ(Choose(1, 10.0, &one).rows, 1);
  EXPECT_EQ(one.probed, (std::vector<int>{1, 1}));
}

TEST(ChunkCalibrationTest, AProbeErrorIsReturned) {
  int calls = 0;
  absl::StatusOr<ChunkCalibration> c = ChooseChunkRows(8, 0.25, [&](int) -> absl::StatusOr<double> {
    if (++calls == 3) return absl::ResourceExhaustedError("out of memory");
    return 0.01;
  });
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace tandem

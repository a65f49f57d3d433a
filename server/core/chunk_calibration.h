// ChooseChunkRows: how many rows of a micro-batch one training chunk holds so that it takes about
// a target time. A chunk's time on a CPU is far from linear in its rows (a few rows leave cores
// and vector units idle: measured 27 ms a row at 1-4 rows against 9 ms a row at 32 for the
// image recipe's U-Net), so rows are probed, not extrapolated: 1 row, then 2, 4, 8, ... until a
// probe takes longer than the target or the whole batch has been timed. Each size runs twice and
// the faster run counts: a shape's first run pays one-off costs (measured: 8 rows of the 5-layer
// text recipe in bfloat16 took 166 ms the first time, about 90 ms after). The rows are then read
// off the last two probes (linear between them), and
// evened out so that the batch's chunks are about equal (no small remainder chunk).
// Torch-free; pure but for the probe it calls.
#ifndef TANDEM_SERVER_CORE_CHUNK_CALIBRATION_H_
#define TANDEM_SERVER_CORE_CHUNK_CALIBRATION_H_

#include <functional>

#include "absl/status/statusor.h"

namespace tandem {

struct ChunkCalibration {
  int rows = 1;                // chosen chunk size, in [1, batch]
  double seconds_per_row = 0;  // measured at the probe the choice rests on
};

// probe(rows) runs one chunk of `rows` rows and returns its seconds; its first error is returned.
// batch >= 1, target_seconds > 0.
absl::StatusOr<ChunkCalibration> ChooseChunkRows(
    int batch, double target_seconds, const std::function<absl::StatusOr<double>(int)>& probe);

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_CHUNK_CALIBRATION_H_

#include "server/core/chunk_calibration.h"

#include <algorithm>
#include <cmath>

namespace tandem {

absl::StatusOr<ChunkCalibration> ChooseChunkRows(
    int batch, double target_seconds, const std::function<absl::StatusOr<double>(int)>& probe) {
  batch = std::max(1, batch);
  if (absl::StatusOr<double> warm = probe(1); !warm.ok()) return warm.status();
  // The largest probe that fits the target (fit) and the first that does not (over).
  int fit_rows = 0, over_rows = 0;
  double fit_seconds = 0, over_seconds = 0;
  for (int rows = 1;; rows = std::min(batch, 2 * rows)) {
    absl::StatusOr<double> seconds = probe(rows);
    if (!seconds.ok()) return seconds.status();
    if (*seconds > target_seconds) {
      over_rows = rows;
      over_seconds = *seconds;
      break;
    }
    fit_rows = rows;
    fit_seconds = *seconds;
    if (rows == batch) break;
  }
  ChunkCalibration out;
  if (over_rows == 0) {  // the whole batch fits
    out.rows = batch;
    out.seconds_per_row = fit_seconds / batch;
    return out;
  }
  double rows = 1;
  if (fit_rows > 0 && over_seconds > fit_seconds) {
    rows = fit_rows + (target_seconds - fit_seconds) / (over_seconds - fit_seconds) *
                          (over_rows - fit_rows);
  }
  const int cap = std::clamp(static_cast<int>(std::floor(rows)), 1, batch);
  const int chunks = (batch + cap - 1) / cap;
  out.rows = (batch + chunks - 1) / chunks;  // <= cap: the chunks even, none over the target
  out.seconds_per_row = fit_rows > 0 ? fit_seconds / fit_rows : over_seconds / over_rows;
  return out;
}

}  // namespace tandem

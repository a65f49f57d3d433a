#include "server/core/chunk_calibration.h"

#include <algorithm>
#include <cmath>

namespace tandem {

absl::StatusOr<ChunkCalibration> ChooseChunkRows(
    int batch, double target_seconds, const std::function<absl::StatusOr<double>(int)>& probe) {
  batch = std::max(1, batch);
  // A size's first chunk pays one-off costs (kernels built for its shapes, e.g. oneDNN's
  // bfloat16 products; the allocator growing): each size runs twice, the faster run counts.
  auto timed = [&probe](int rows) -> absl::StatusOr<double> {
    absl::StatusOr<double> first = probe(rows);
    if (!first.ok()) return first;
    absl::StatusOr<double> second = probe(rows);
    if (!second.ok()) return second;
    return std::min(*first, *second);
  };
  // The largest probe that fits the target (fit) and the first that does not (over).
  int fit_rows = 0, over_rows = 0;
  double fit_seconds = 0, over_seconds = 0;
  for (int rows = 1;; rows = std::min(batch, 2 * rows)) {
    absl::StatusOr<double> seconds = timed(rows);
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

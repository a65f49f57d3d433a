// Measures this machine's memory read bandwidth (a STREAM-style sum over a buffer far larger than
// the caches, split over `threads` threads), so a benchmark can say what share of it a model's
// weight streaming reaches.
#ifndef TANDEM_BENCH_MEMORY_BANDWIDTH_H_
#define TANDEM_BENCH_MEMORY_BANDWIDTH_H_

#include <cstdint>

namespace tandem::bench {

struct ReadBandwidth {
  double gb_per_s = 0;  // best pass, 1e9 bytes per second
  int64_t bytes = 0;    // the buffer
  int threads = 0;
};

// `passes` reads of a `bytes` buffer (each thread sums its own slice); the fastest pass wins.
ReadBandwidth MeasureReadBandwidth(int threads, int64_t bytes, int passes);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_MEMORY_BANDWIDTH_H_

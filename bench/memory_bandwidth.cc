#include "bench/memory_bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace tandem::bench {
namespace {

typedef float Float8 __attribute__((vector_size(32)));

// The sum of n floats (n a multiple of 32), four independent accumulators so that the loads,
// not the additions, bound it.
float Sum(const float* p, int64_t n) {
  Float8 a = {}, b = {}, c = {}, d = {}, x;
  for (int64_t i = 0; i < n; i += 32) {
    std::memcpy(&x, p + i, sizeof(x)), a += x;
    std::memcpy(&x, p + i + 8, sizeof(x)), b += x;
    std::memcpy(&x, p + i + 16, sizeof(x)), c += x;
    std::memcpy(&x, p + i + 24, sizeof(x)), d += x;
  }
  a += b + c + d;
  float s = 0;
  for (int i = 0; i < 8; ++i) s += a[i];
  return s;
}

}  // namespace

ReadBandwidth MeasureReadBandwidth(int threads, int64_t bytes, int passes) {
  threads = std::max(1, threads);
  const int64_t per_thread = bytes / sizeof(float) / threads / 32 * 32;
  std::vector<float> buffer(per_thread * threads, 1.0f);  // written once: every page is mapped
  ReadBandwidth best;
  best.bytes = per_thread * threads * static_cast<int64_t>(sizeof(float));
  best.threads = threads;
  std::vector<float> sums(threads);
  for (int pass = 0; pass < passes; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] { sums[t] = Sum(buffer.data() + t * per_thread, per_thread); });
    }
    for (std::thread& w : workers) w.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best.gb_per_s = std::max(best.gb_per_s, best.bytes / s / 1e9);
  }
  // The sums are used, so the reads are not optimised away.
  volatile float sink = 0;
  for (float s : sums) sink = sink + s;
  return best;
}

}  // namespace tandem::bench

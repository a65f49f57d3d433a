// Measures this machine's float32 matmul peak through LibTorch (the same BLAS and thread count the
// server uses), so a benchmark can say what fraction of it the model's useful arithmetic reaches.
#ifndef TANDEM_BENCH_MATMUL_PEAK_H_
#define TANDEM_BENCH_MATMUL_PEAK_H_

#include <string>

namespace tandem::bench {

struct MatmulPeak {
  double gflops = 0;  // best of the sizes tried
  int size = 0;       // the n of the n x n x n product that reached it
  int threads = 0;
};

// Square products of several sizes on `device`, `seconds` of timing each; the best rate wins.
MatmulPeak MeasureMatmulPeak(const std::string& device, int threads, double seconds);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_MATMUL_PEAK_H_

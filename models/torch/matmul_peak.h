// MeasureMatmulPeak: a device's float32 matmul rate through LibTorch (the same BLAS and thread
// count the caller runs with), the "peak" that a benchmark's useful arithmetic and the server's
// MFU estimate are compared against. It runs on the calling thread and keeps LibTorch's thread
// count as it is. Torch-free header.
#ifndef TANDEM_MODELS_TORCH_MATMUL_PEAK_H_
#define TANDEM_MODELS_TORCH_MATMUL_PEAK_H_

#include <string>
#include <vector>

namespace tandem {

struct MatmulPeak {
  double gflops = 0;  // best of the sizes tried
  int size = 0;       // the n of the n x n x n product that reached it
  int threads = 0;    // LibTorch intra-op threads it ran with
};

// Square products of each size in `sizes` on `device`, `seconds` of timing each (after one
// warm-up product); the best rate wins. gflops 0 when the device cannot run them.
MatmulPeak MeasureMatmulPeak(const std::string& device, double seconds,
                             const std::vector<int>& sizes = {256, 512, 1024, 2048});

}  // namespace tandem

#endif  // TANDEM_MODELS_TORCH_MATMUL_PEAK_H_

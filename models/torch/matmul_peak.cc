#include "models/torch/matmul_peak.h"

#include <torch/torch.h>

#include <chrono>

namespace tandem {

MatmulPeak MeasureMatmulPeak(const std::string& device, double seconds,
                             const std::vector<int>& sizes) {
  MatmulPeak best;
  try {
    torch::InferenceMode guard;
    torch::Device dev(device);
    best.threads = at::get_num_threads();
    for (int n : sizes) {
      auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(dev);
      torch::Tensor a = torch::randn({n, n}, opts);  // [n, n]
      torch::Tensor b = torch::randn({n, n}, opts);  // [n, n]
      torch::Tensor c = torch::empty({n, n}, opts);  // [n, n]
      torch::mm_out(c, a, b);  // warm-up: BLAS thread pool, page faults
      if (dev.is_cuda()) torch::cuda::synchronize();
      int iters = 0;
      auto t0 = std::chrono::steady_clock::now();
      double elapsed = 0;
      do {
        torch::mm_out(c, a, b);
        ++iters;
        if (dev.is_cuda()) torch::cuda::synchronize();
        elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      } while (elapsed < seconds);
      const double gflops = 2.0 * n * n * n * iters / elapsed / 1e9;
      if (gflops > best.gflops) {
        best.gflops = gflops;
        best.size = n;
      }
    }
  } catch (const c10::Error&) {
    return MatmulPeak{};
  }
  return best;
}

}  // namespace tandem

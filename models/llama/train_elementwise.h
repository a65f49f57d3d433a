// The element-wise layers of the training forward, forward and backward, fused for the CPU:
// RMSNorm, SwiGLU's gate (silu(a) * b) and the rotary embedding. In ATen each is a chain of 4 to
// 10 kernels with a temporary tensor between every two of them, forward and backward; here each
// is one pass over its rows. The training forward (llama_train_net.cc) wraps them in autograd
// functions on float32 CPU tensors; other devices keep the ATen formulation, which these match
// within float rounding.
//
// Torch-free: plain float32 arrays, row-major; the caller splits rows (or elements) over threads.
// Every output element depends only on the width and its own row's inputs, and the one
// reduction across rows (RMSNorm's gain gradient) is accumulated per block of rows, in row
// order, by the caller's fixed blocking: results never depend on the number of threads.
#ifndef TANDEM_MODELS_LLAMA_TRAIN_ELEMENTWISE_H_
#define TANDEM_MODELS_LLAMA_TRAIN_ELEMENTWISE_H_

#include <cstdint>

#include "models/llama/cpu_kernels.h"

namespace tandem::cpu_kernels {

// Rows [begin, end) of x [N, dim]: inv_rms[n] = 1 / sqrt(mean(x[n]^2) + eps) and
// y[n] = x[n] * inv_rms[n] * gain.
void RmsNormForward(Width width, const float* x, const float* gain, int64_t dim, float eps,
                    float* y, float* inv_rms, int64_t begin, int64_t end);

// Rows [begin, end): dx[n] (overwritten) = the gradient of the forward's y[n] for its upstream
// gradient dy[n], and dgain[0, dim) += dy[n] * x[n] * inv_rms[n] over the rows, in row order.
void RmsNormBackward(Width width, const float* x, const float* gain, const float* inv_rms,
                     const float* dy, int64_t dim, float* dx, float* dgain, int64_t begin,
                     int64_t end);

// Elements [begin, end): out = silu(a) * b, silu(a) = a / (1 + e^-a).
void SwiGluForward(Width width, const float* a, const float* b, float* out, int64_t begin,
                   int64_t end);

// Elements [begin, end): da = dout * b * silu'(a), db = dout * silu(a) (overwritten).
void SwiGluBackward(Width width, const float* a, const float* b, const float* dout, float* da,
                    float* db, int64_t begin, int64_t end);

// Rows [begin, end) of x [B * T, heads, head_dim] (row r at position r % seq): each pair
// (2i, 2i + 1) of every head rotated by the angle whose cos / sin are cos[t, i] / sin[t, i]
// ([seq, head_dim / 2]); `inverse` rotates by minus the angle (the backward: the rotation's
// transpose). y may not alias x.
void Rotate(const float* x, const float* cos, const float* sin, int64_t seq, int64_t heads,
            int64_t head_dim, bool inverse, float* y, int64_t begin, int64_t end);

}  // namespace tandem::cpu_kernels

#endif  // TANDEM_MODELS_LLAMA_TRAIN_ELEMENTWISE_H_

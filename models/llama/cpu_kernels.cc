#include "models/llama/cpu_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "models/llama/vec.h"

namespace tandem::cpu_kernels {
namespace {

using vec::Dot;
using vec::Float16;
using vec::Float4;
using vec::Float8;
using vec::HSum;
using vec::Load;

// sum_d w[d] * x_k[d] for four x_k at once, each the very sequence of operations Dot<V>(w, x_k)
// performs (so each result is Dot's, bit for bit), the loads of w shared by the four. Written
// out by hand: with arrays of accumulators GCC keeps them on the stack.
template <typename V>
TANDEM_INLINE void Dot4(const float* w, const float* x0, const float* x1, const float* x2,
                        const float* x3, int64_t n, float* out) {
  constexpr int64_t kLanes = sizeof(V) / sizeof(float);
  V a0 = {}, b0 = {}, a1 = {}, b1 = {}, a2 = {}, b2 = {}, a3 = {}, b3 = {}, w0, w1, u, v;
  int64_t d = 0;
  for (; d + 2 * kLanes <= n; d += 2 * kLanes) {
    Load(w0, w + d), Load(w1, w + d + kLanes);
    Load(u, x0 + d), Load(v, x0 + d + kLanes), a0 += w0 * u, b0 += w1 * v;
    Load(u, x1 + d), Load(v, x1 + d + kLanes), a1 += w0 * u, b1 += w1 * v;
    Load(u, x2 + d), Load(v, x2 + d + kLanes), a2 += w0 * u, b2 += w1 * v;
    Load(u, x3 + d), Load(v, x3 + d + kLanes), a3 += w0 * u, b3 += w1 * v;
  }
  if (d + kLanes <= n) {
    Load(w0, w + d);
    Load(u, x0 + d), a0 += w0 * u;
    Load(u, x1 + d), a1 += w0 * u;
    Load(u, x2 + d), a2 += w0 * u;
    Load(u, x3 + d), a3 += w0 * u;
    d += kLanes;
  }
  float s0 = HSum(a0 + b0), s1 = HSum(a1 + b1), s2 = HSum(a2 + b2), s3 = HSum(a3 + b3);
  for (; d < n; ++d) {
    s0 += w[d] * x0[d];
    s1 += w[d] * x1[d];
    s2 += w[d] * x2[d];
    s3 += w[d] * x3[d];
  }
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

// ---- MatMat ----------------------------------------------------------------------------------

// Rows [begin, end) of Y = X w^T (+ R), one weight row after the other: each row is one
// sequential stream, which the hardware prefetchers follow at full speed, and is read once for
// all the inputs, four at a time. (Interleaving a few weight rows instead, with software
// prefetches, measured slower on every weight shape of a 15M model: the prefetchers lose the
// pattern, and the prefetch instructions stall on full fill buffers.)
template <typename V>
TANDEM_INLINE void MatMatT(const float* w, int64_t cols, const float* x, int64_t x_stride,
                           int64_t b, const float* residual, float* y, int64_t y_stride,
                           int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const float* row = w + r * cols;
    int64_t m = 0;
    for (; m + 4 <= b; m += 4) {
      const float* xm = x + m * x_stride;
      float sums[4];
      Dot4<V>(row, xm, xm + x_stride, xm + 2 * x_stride, xm + 3 * x_stride, cols, sums);
      for (int k = 0; k < 4; ++k) {
        const int64_t at = (m + k) * y_stride + r;
        y[at] = residual != nullptr ? residual[at] + sums[k] : sums[k];
      }
    }
    for (; m < b; ++m) {
      const float sum = Dot<V>(row, x + m * x_stride, cols);
      const int64_t at = m * y_stride + r;
      y[at] = residual != nullptr ? residual[at] + sum : sum;
    }
  }
}

template <typename V>
TANDEM_INLINE float SumSquaresT(const float* x, int64_t n) {
  return Dot<V>(x, x, n);
}

// ---- attention -------------------------------------------------------------------------------

template <typename V>
TANDEM_INLINE void ScoresT(const AttentionStep& s, int64_t begin, int64_t end) {
  const int64_t g = s.g, hd = s.hd, L = s.length;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t i = task / s.kv_heads, j = task % s.kv_heads, pos = s.positions[i];
    const float* q = s.qkv + task * (g + 2) * hd;  // [G+2, hd]
    float* k = s.Cache(0, i, j);                   // [T, hd]
    std::memcpy(k + pos * hd, q + g * hd, hd * sizeof(float));
    std::memcpy(s.Cache(1, i, j) + pos * hd, q + (g + 1) * hd, hd * sizeof(float));
    float* scores = s.scores + task * g * L;  // [G, L]
    for (int64_t t = 0; t <= pos; ++t) {
      for (int64_t h = 0; h < g; ++h) {
        scores[h * L + t] = s.scale * Dot<V>(q + h * hd, k + t * hd, hd);
      }
    }
    for (int64_t h = 0; h < g; ++h) {
      std::fill(scores + h * L + pos + 1, scores + (h + 1) * L,
                -std::numeric_limits<float>::infinity());
    }
  }
}

// out[0:hd] = sum over t < n of p[t] * v[t, 0:hd], the output held in registers across t,
// kBlock vectors at a time (then fewer, then the scalar tail).
template <typename V, int kBlock>
TANDEM_INLINE int64_t WeightedSumBlocks(const float* p, const float* v, int64_t n, int64_t hd,
                                        int64_t c, float* out) {
  constexpr int64_t kLanes = sizeof(V) / sizeof(float);
  for (; c + kBlock * kLanes <= hd; c += kBlock * kLanes) {
    V acc[kBlock] = {}, vv;
    for (int64_t t = 0; t < n; ++t) {
      const float* row = v + t * hd + c;
      for (int k = 0; k < kBlock; ++k) Load(vv, row + k * kLanes), acc[k] += p[t] * vv;
    }
    std::memcpy(out + c, acc, sizeof(acc));
  }
  return c;
}

template <typename V>
TANDEM_INLINE void WeightedSum(const float* p, const float* v, int64_t n, int64_t hd, float* out) {
  int64_t c = WeightedSumBlocks<V, 4>(p, v, n, hd, 0, out);
  c = WeightedSumBlocks<V, 2>(p, v, n, hd, c, out);
  c = WeightedSumBlocks<V, 1>(p, v, n, hd, c, out);
  for (; c < hd; ++c) {
    float acc = 0.0f;
    for (int64_t t = 0; t < n; ++t) acc += p[t] * v[t * hd + c];
    out[c] = acc;
  }
}

template <typename V>
TANDEM_INLINE void ValuesT(const AttentionStep& s, int64_t begin, int64_t end) {
  const int64_t g = s.g, hd = s.hd, L = s.length;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t i = task / s.kv_heads, j = task % s.kv_heads, n = s.positions[i] + 1;
    const float* v = s.Cache(1, i, j);  // [T, hd]
    for (int64_t h = 0; h < g; ++h) {
      WeightedSum<V>(s.scores + (task * g + h) * L, v, n, hd, s.out + (task * g + h) * hd);
    }
  }
}

// ---- one entry point per width ---------------------------------------------------------------

void MatMat4(const float* w, int64_t cols, const float* x, int64_t x_stride, int64_t b,
             const float* residual, float* y, int64_t y_stride, int64_t begin, int64_t end) {
  MatMatT<Float4>(w, cols, x, x_stride, b, residual, y, y_stride, begin, end);
}
float SumSquares4(const float* x, int64_t n) { return SumSquaresT<Float4>(x, n); }
void Scores4(const AttentionStep& s, int64_t begin, int64_t end) { ScoresT<Float4>(s, begin, end); }
void Values4(const AttentionStep& s, int64_t begin, int64_t end) { ValuesT<Float4>(s, begin, end); }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TANDEM_HAVE_WIDE 1
__attribute__((target("avx2,fma"))) void MatMat8(const float* w, int64_t cols, const float* x,
                                                 int64_t x_stride, int64_t b, const float* residual,
                                                 float* y, int64_t y_stride, int64_t begin,
                                                 int64_t end) {
  MatMatT<Float8>(w, cols, x, x_stride, b, residual, y, y_stride, begin, end);
}
__attribute__((target("avx2,fma"))) float SumSquares8(const float* x, int64_t n) {
  return SumSquaresT<Float8>(x, n);
}
__attribute__((target("avx2,fma"))) void Scores8(const AttentionStep& s, int64_t begin,
                                                 int64_t end) {
  ScoresT<Float8>(s, begin, end);
}
__attribute__((target("avx2,fma"))) void Values8(const AttentionStep& s, int64_t begin,
                                                 int64_t end) {
  ValuesT<Float8>(s, begin, end);
}
__attribute__((target("avx512f,avx2,fma"))) void MatMat16(const float* w, int64_t cols,
                                                          const float* x, int64_t x_stride,
                                                          int64_t b, const float* residual,
                                                          float* y, int64_t y_stride, int64_t begin,
                                                          int64_t end) {
  MatMatT<Float16>(w, cols, x, x_stride, b, residual, y, y_stride, begin, end);
}
__attribute__((target("avx512f,avx2,fma"))) float SumSquares16(const float* x, int64_t n) {
  return SumSquaresT<Float16>(x, n);
}
__attribute__((target("avx512f,avx2,fma"))) void Scores16(const AttentionStep& s, int64_t begin,
                                                          int64_t end) {
  ScoresT<Float16>(s, begin, end);
}
__attribute__((target("avx512f,avx2,fma"))) void Values16(const AttentionStep& s, int64_t begin,
                                                          int64_t end) {
  ValuesT<Float16>(s, begin, end);
}
#else
#define TANDEM_HAVE_WIDE 0
#endif

}  // namespace

Width WidestWidth() {
#if TANDEM_HAVE_WIDE
  static const Width widest = __builtin_cpu_supports("avx512f") ? Width::k16
                              : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                                  ? Width::k8
                                  : Width::k4;
  return widest;
#else
  return Width::k4;
#endif
}

void MatMat(Width width, const float* w, int64_t cols, const float* x, int64_t x_stride, int64_t b,
            const float* residual, float* y, int64_t y_stride, int64_t begin, int64_t end) {
#if TANDEM_HAVE_WIDE
  if (width == Width::k16) {
    return MatMat16(w, cols, x, x_stride, b, residual, y, y_stride, begin, end);
  }
  if (width == Width::k8) {
    return MatMat8(w, cols, x, x_stride, b, residual, y, y_stride, begin, end);
  }
#endif
  MatMat4(w, cols, x, x_stride, b, residual, y, y_stride, begin, end);
}

float InvRms(Width width, const float* x, int64_t n, float eps) {
  float ss;
#if TANDEM_HAVE_WIDE
  if (width == Width::k16) {
    ss = SumSquares16(x, n);
  } else if (width == Width::k8) {
    ss = SumSquares8(x, n);
  } else {
    ss = SumSquares4(x, n);
  }
#else
  ss = SumSquares4(x, n);
#endif
  return 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
}

// The attention loops work on head_dim long vectors: 16 lanes when they divide it.
void AttentionScores(Width width, const AttentionStep& s, int64_t begin, int64_t end) {
#if TANDEM_HAVE_WIDE
  if (width == Width::k16 && s.hd % 16 == 0) return Scores16(s, begin, end);
  if (width != Width::k4) return Scores8(s, begin, end);
#endif
  Scores4(s, begin, end);
}

void AttentionValues(Width width, const AttentionStep& s, int64_t begin, int64_t end) {
#if TANDEM_HAVE_WIDE
  if (width == Width::k16 && s.hd % 16 == 0) return Values16(s, begin, end);
  if (width != Width::k4) return Values8(s, begin, end);
#endif
  Values4(s, begin, end);
}

void AttentionSoftmax(const AttentionStep& s, int64_t begin, int64_t end) {
  const int64_t g = s.g, L = s.length;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = s.positions[task / s.kv_heads] + 1;
    for (int64_t h = 0; h < g; ++h) {
      float* p = s.scores + (task * g + h) * L;
      const float top = *std::max_element(p, p + n);
      float sum = 0.0f;
      for (int64_t t = 0; t < n; ++t) sum += (p[t] = std::exp(p[t] - top));
      const float inv = 1.0f / sum;
      for (int64_t t = 0; t < n; ++t) p[t] *= inv;
      std::fill(p + n, p + L, 0.0f);
    }
  }
}

}  // namespace tandem::cpu_kernels

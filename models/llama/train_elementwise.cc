#include "models/llama/train_elementwise.h"

#include <cstdint>
#include <cstring>

#include "models/llama/vec.h"

namespace tandem::cpu_kernels {
namespace {

using vec::Exp;
using vec::HSum;
using vec::Lanes;
using vec::Load;
using vec::Store;

// (The *T templates are inlined into each width's entry point, which gives them its target, as
// in train_attention.cc.)

template <typename V>
TANDEM_INLINE void RmsNormForwardT(const float* x, const float* gain, int64_t dim, float r,
                                   float* y) {
  constexpr int64_t L = Lanes<V>();
  int64_t d = 0;
  for (V xv, gv; d + L <= dim; d += L) {
    Load(xv, x + d), Load(gv, gain + d);
    Store(y + d, xv * r * gv);
  }
  for (; d < dim; ++d) y[d] = x[d] * r * gain[d];
}

// One row: y = x r g with r = (mean(x^2) + eps)^-1/2, so with u = dy g,
// dx = r u - x r^3 (u . x) / dim, and dgain += dy x r.
template <typename V>
TANDEM_INLINE void RmsNormBackwardT(const float* x, const float* gain, float r, const float* dy,
                                    int64_t dim, float* dx, float* dgain) {
  constexpr int64_t L = Lanes<V>();
  V acc = {}, xv, gv, dv;
  int64_t d = 0;
  for (; d + L <= dim; d += L) {
    Load(xv, x + d), Load(gv, gain + d), Load(dv, dy + d);
    acc += dv * gv * xv;
  }
  float dot = HSum(acc);
  for (; d < dim; ++d) dot += dy[d] * gain[d] * x[d];
  const float c = r * r * r * dot / static_cast<float>(dim);
  d = 0;
  for (V sv; d + L <= dim; d += L) {
    Load(xv, x + d), Load(gv, gain + d), Load(dv, dy + d), Load(sv, dgain + d);
    Store(dx + d, r * (dv * gv) - xv * c);
    Store(dgain + d, sv + dv * (xv * r));
  }
  for (; d < dim; ++d) {
    dx[d] = r * (dy[d] * gain[d]) - x[d] * c;
    dgain[d] += dy[d] * (x[d] * r);
  }
}

// sigmoid(a) = 1 / (1 + e^-a), lane by lane.
template <typename V>
TANDEM_INLINE void Sigmoid(const V& a, V& s) {
  s = -a;
  Exp(s);
  s = 1.0f / (1.0f + s);
}

// One vector of elements at a, b, ... (whole vectors; the tails go through a padded copy, so that
// every element takes the same arithmetic wherever the caller's range ends).
template <typename V>
TANDEM_INLINE void SwiGluForwardVec(const float* a, const float* b, float* out) {
  V av, bv, s;
  Load(av, a), Load(bv, b), Sigmoid(av, s);
  Store(out, av * s * bv);
}

// silu'(a) = s + a s (1 - s) with s = sigmoid(a).
template <typename V>
TANDEM_INLINE void SwiGluBackwardVec(const float* a, const float* b, const float* dout, float* da,
                                     float* db) {
  V av, bv, gv, s;
  Load(av, a), Load(bv, b), Load(gv, dout), Sigmoid(av, s);
  const V silu = av * s;
  Store(db, gv * silu);
  Store(da, gv * bv * (s + silu * (1.0f - s)));
}

template <typename V>
TANDEM_INLINE void SwiGluForwardT(const float* a, const float* b, float* out, int64_t begin,
                                  int64_t end) {
  constexpr int64_t L = Lanes<V>();
  int64_t i = begin;
  for (; i + L <= end; i += L) SwiGluForwardVec<V>(a + i, b + i, out + i);
  if (i == end) return;
  const size_t bytes = (end - i) * sizeof(float);
  float ta[L] = {}, tb[L] = {}, to[L];
  std::memcpy(ta, a + i, bytes), std::memcpy(tb, b + i, bytes);
  SwiGluForwardVec<V>(ta, tb, to);
  std::memcpy(out + i, to, bytes);
}

template <typename V>
TANDEM_INLINE void SwiGluBackwardT(const float* a, const float* b, const float* dout, float* da,
                                   float* db, int64_t begin, int64_t end) {
  constexpr int64_t L = Lanes<V>();
  int64_t i = begin;
  for (; i + L <= end; i += L) SwiGluBackwardVec<V>(a + i, b + i, dout + i, da + i, db + i);
  if (i == end) return;
  const size_t bytes = (end - i) * sizeof(float);
  float ta[L] = {}, tb[L] = {}, tg[L] = {}, tda[L], tdb[L];
  std::memcpy(ta, a + i, bytes), std::memcpy(tb, b + i, bytes), std::memcpy(tg, dout + i, bytes);
  SwiGluBackwardVec<V>(ta, tb, tg, tda, tdb);
  std::memcpy(da + i, tda, bytes), std::memcpy(db + i, tdb, bytes);
}

#define TANDEM_WIDTH_ENTRIES(W, V, TARGET)                                                      \
  TARGET void RmsNormForward##W(const float* x, const float* gain, int64_t dim, float r,       \
                                float* y) {                                                   \
    RmsNormForwardT<V>(x, gain, dim, r, y);                                                   \
  }                                                                                           \
  TARGET void RmsNormBackward##W(const float* x, const float* gain, float r, const float* dy,  \
                                 int64_t dim, float* dx, float* dgain) {                      \
    RmsNormBackwardT<V>(x, gain, r, dy, dim, dx, dgain);                                      \
  }                                                                                           \
  TARGET void SwiGluForward##W(const float* a, const float* b, float* out, int64_t begin,      \
                               int64_t end) {                                                 \
    SwiGluForwardT<V>(a, b, out, begin, end);                                                 \
  }                                                                                           \
  TARGET void SwiGluBackward##W(const float* a, const float* b, const float* dout, float* da,  \
                                float* db, int64_t begin, int64_t end) {                      \
    SwiGluBackwardT<V>(a, b, dout, da, db, begin, end);                                       \
  }

TANDEM_WIDTH_ENTRIES(4, vec::Float4, )
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TANDEM_HAVE_WIDE 1
TANDEM_WIDTH_ENTRIES(8, vec::Float8, __attribute__((target("avx2,fma"))))
TANDEM_WIDTH_ENTRIES(16, vec::Float16, __attribute__((target("avx512f,avx2,fma"))))
#else
#define TANDEM_HAVE_WIDE 0
#endif
#undef TANDEM_WIDTH_ENTRIES

// The entry point of `width` for a kernel named `name`: name##16, name##8 or name##4.
#if TANDEM_HAVE_WIDE
#define TANDEM_BY_WIDTH(width, name, ...)                           \
  ((width) == Width::k16 ? name##16(__VA_ARGS__)                    \
   : (width) == Width::k8 ? name##8(__VA_ARGS__) : name##4(__VA_ARGS__))
#else
#define TANDEM_BY_WIDTH(width, name, ...) name##4(__VA_ARGS__)
#endif

}  // namespace

void RmsNormForward(Width width, const float* x, const float* gain, int64_t dim, float eps,
                    float* y, float* inv_rms, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) {
    const float r = InvRms(width, x + n * dim, dim, eps);
    inv_rms[n] = r;
    TANDEM_BY_WIDTH(width, RmsNormForward, x + n * dim, gain, dim, r, y + n * dim);
  }
}

void RmsNormBackward(Width width, const float* x, const float* gain, const float* inv_rms,
                     const float* dy, int64_t dim, float* dx, float* dgain, int64_t begin,
                     int64_t end) {
  for (int64_t n = begin; n < end; ++n) {
    TANDEM_BY_WIDTH(width, RmsNormBackward, x + n * dim, gain, inv_rms[n], dy + n * dim, dim,
                    dx + n * dim, dgain);
  }
}

void SwiGluForward(Width width, const float* a, const float* b, float* out, int64_t begin,
                   int64_t end) {
  TANDEM_BY_WIDTH(width, SwiGluForward, a, b, out, begin, end);
}

void SwiGluBackward(Width width, const float* a, const float* b, const float* dout, float* da,
                    float* db, int64_t begin, int64_t end) {
  TANDEM_BY_WIDTH(width, SwiGluBackward, a, b, dout, da, db, begin, end);
}

void Rotate(const float* x, const float* cos, const float* sin, int64_t seq, int64_t heads,
            int64_t head_dim, bool inverse, float* y, int64_t begin, int64_t end) {
  const int64_t half = head_dim / 2;
  const float sign = inverse ? -1.0f : 1.0f;
  for (int64_t r = begin; r < end; ++r) {
    const float* c = cos + (r % seq) * half;
    const float* s = sin + (r % seq) * half;
    for (int64_t h = 0; h < heads; ++h) {
      const float* xh = x + (r * heads + h) * head_dim;
      float* yh = y + (r * heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float x0 = xh[2 * i], x1 = xh[2 * i + 1], si = sign * s[i];
        yh[2 * i] = x0 * c[i] - x1 * si;
        yh[2 * i + 1] = x0 * si + x1 * c[i];
      }
    }
  }
}

}  // namespace tandem::cpu_kernels

#include "models/llama/train_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "models/llama/vec.h"

namespace tandem::cpu_kernels {
namespace {

using vec::Exp;
using vec::HSum;
using vec::Lanes;
using vec::Load;
using vec::Store;

// n rounded up to whole vectors.
template <typename V>
int64_t Padded(int64_t n) {
  return (n + Lanes<V>() - 1) / Lanes<V>() * Lanes<V>();
}

// out[d * stride + t] = m[t * m_stride + d] for t < n, d < hd; 0 for n <= t < stride.
void Transpose(const float* m, int64_t m_stride, int64_t n, int64_t hd, int64_t stride,
               float* out) {
  for (int64_t d = 0; d < hd; ++d) {
    float* row = out + d * stride;
    for (int64_t t = 0; t < n; ++t) row[t] = m[t * m_stride + d];
    std::fill(row + n, row + stride, 0.0f);
  }
}

// out[0, np) = scale * sum_d x[d] * mt[d * stride + 0 : np), np a multiple of the lanes: four
// vectors of outputs at a time, each accumulated over d in a register.
template <typename V>
TANDEM_INLINE void RowTimesTransposed(const float* x, const float* mt, int64_t stride, int64_t hd,
                                      int64_t np, float scale, float* out) {
  constexpr int64_t L = Lanes<V>();
  int64_t c = 0;
  for (; c + 4 * L <= np; c += 4 * L) {
    V a0 = {}, a1 = {}, a2 = {}, a3 = {}, m;
    for (int64_t d = 0; d < hd; ++d) {
      const float* row = mt + d * stride + c;
      const float xd = x[d];
      Load(m, row), a0 += xd * m;
      Load(m, row + L), a1 += xd * m;
      Load(m, row + 2 * L), a2 += xd * m;
      Load(m, row + 3 * L), a3 += xd * m;
    }
    Store(out + c, a0 * scale), Store(out + c + L, a1 * scale);
    Store(out + c + 2 * L, a2 * scale), Store(out + c + 3 * L, a3 * scale);
  }
  for (; c < np; c += L) {
    V a = {}, m;
    for (int64_t d = 0; d < hd; ++d) Load(m, mt + d * stride + c), a += x[d] * m;
    Store(out + c, a * scale);
  }
}

// The largest of s[0, n).
float RowMax(const float* s, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < n; ++t) m = std::max(m, s[t]);
  return m;
}

// s[t] = e^(s[t] - shift) for t < n, 0 for n <= t < np; returns the sum over t < n.
template <typename V>
TANDEM_INLINE float ExpRow(float* s, int64_t n, int64_t np, float shift) {
  constexpr int64_t L = Lanes<V>();
  V acc = {}, x;
  for (int64_t c = 0; c < np; c += L) {
    Load(x, s + c);
    x -= shift;
    Exp(x);
    for (int64_t lane = std::max<int64_t>(0, n - c); lane < L; ++lane) x[lane] = 0.0f;
    acc += x;
    Store(s + c, x);
  }
  return HSum(acc);
}

// out[0, hd) = scale * sum over t < n of c[t * c_stride] * rows[t * r_stride + 0 : hd), added to
// out when `accumulate`. Two vectors of hd and two rows of t at a time (four chains of FMAs),
// then one vector, then scalar columns.
template <typename V>
TANDEM_INLINE void SumRows(const float* c, int64_t c_stride, const float* rows, int64_t r_stride,
                           int64_t n, int64_t hd, float scale, bool accumulate, float* out) {
  constexpr int64_t L = Lanes<V>();
  int64_t d = 0;
  for (; d + 2 * L <= hd; d += 2 * L) {
    V a0 = {}, a1 = {}, b0 = {}, b1 = {}, m;
    int64_t t = 0;
    for (; t + 2 <= n; t += 2) {
      const float* r0 = rows + t * r_stride + d;
      const float* r1 = r0 + r_stride;
      const float c0 = c[t * c_stride], c1 = c[(t + 1) * c_stride];
      Load(m, r0), a0 += c0 * m;
      Load(m, r0 + L), a1 += c0 * m;
      Load(m, r1), b0 += c1 * m;
      Load(m, r1 + L), b1 += c1 * m;
    }
    if (t < n) {
      const float* r0 = rows + t * r_stride + d;
      const float c0 = c[t * c_stride];
      Load(m, r0), a0 += c0 * m;
      Load(m, r0 + L), a1 += c0 * m;
    }
    a0 = (a0 + b0) * scale;
    a1 = (a1 + b1) * scale;
    if (accumulate) {
      Load(m, out + d), a0 += m;
      Load(m, out + d + L), a1 += m;
    }
    Store(out + d, a0), Store(out + d + L, a1);
  }
  for (; d + L <= hd; d += L) {
    V a0 = {}, m;
    for (int64_t t = 0; t < n; ++t) Load(m, rows + t * r_stride + d), a0 += c[t * c_stride] * m;
    a0 *= scale;
    if (accumulate) Load(m, out + d), a0 += m;
    Store(out + d, a0);
  }
  for (; d < hd; ++d) {
    float a0 = 0.0f;
    for (int64_t t = 0; t < n; ++t) a0 += c[t * c_stride] * rows[t * r_stride + d];
    out[d] = (accumulate ? out[d] : 0.0f) + a0 * scale;
  }
}

float DotScalar(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
  for (int64_t d = 0; d < n; ++d) sum += a[d] * b[d];
  return sum;
}

// (ForwardT and BackwardT are inlined into each width's entry point, which gives them its
// target: out of line they would be compiled for baseline x86-64, the wide vectors emulated.)

// Where a task's rows are: row i of query head `head` is at q + QueryRow(b, i, head) (stride
// H * hd between positions), row t of its kv head at k + KeyRow(b, t, j) (stride KV * hd).
struct Layout {
  explicit Layout(const CausalAttention& a)
      : t(a.seq), h(a.heads), kv(a.kv_heads), hd(a.head_dim), g(a.heads / a.kv_heads) {}
  int64_t QueryRow(int64_t b, int64_t i, int64_t head) const {
    return ((b * t + i) * h + head) * hd;
  }
  int64_t KeyRow(int64_t b, int64_t i, int64_t j) const { return ((b * t + i) * kv + j) * hd; }
  int64_t t, h, kv, hd, g;
};

template <typename V>
TANDEM_INLINE void ForwardT(const CausalAttention& a, const float* q, const float* k,
                            const float* v, float* out, float* lse, int64_t begin, int64_t end) {
  const Layout l(a);
  const int64_t tp = Padded<V>(l.t);
  std::vector<float> kt(l.hd * tp), s(tp);  // [hd, tp] keys transposed; [tp] one score row
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / l.kv, j = task % l.kv;
    Transpose(k + l.KeyRow(b, 0, j), l.kv * l.hd, l.t, l.hd, tp, kt.data());
    const float* vb = v + l.KeyRow(b, 0, j);
    for (int64_t head = j * l.g; head < (j + 1) * l.g; ++head) {
      for (int64_t i = 0; i < l.t; ++i) {
        const int64_t n = i + 1, np = Padded<V>(n), row = l.QueryRow(b, i, head);
        RowTimesTransposed<V>(q + row, kt.data(), tp, l.hd, np, a.scale, s.data());
        const float top = RowMax(s.data(), n);
        const float sum = ExpRow<V>(s.data(), n, np, top);
        SumRows<V>(s.data(), 1, vb, l.kv * l.hd, n, l.hd, 1.0f / sum, false, out + row);
        lse[(b * l.h + head) * l.t + i] = top + std::log(sum);
      }
    }
  }
}

// Per task: for each of its query heads, the rows of P (probabilities) and dS (score
// gradients, scale folded in) and dq, row by row; then dk and dv column by column from them,
// summed over the group's heads in head order.
template <typename V>
TANDEM_INLINE void BackwardT(const CausalAttention& a, const float* q, const float* k,
                             const float* v, const float* out, const float* lse,
                             const float* dout, float* dq, float* dk, float* dv, int64_t begin,
                             int64_t end) {
  constexpr int64_t L = Lanes<V>();
  const Layout l(a);
  const int64_t tp = Padded<V>(l.t);
  std::vector<float> kt(l.hd * tp), vt(l.hd * tp);  // [hd, tp] keys, values transposed
  std::vector<float> p(l.t * tp), ds(l.t * tp);     // [T, tp] rows of P and dS (t <= i valid)
  std::vector<float> dk_sum(l.t * l.hd), dv_sum(l.t * l.hd);  // [T, hd]
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / l.kv, j = task % l.kv;
    const float* kb = k + l.KeyRow(b, 0, j);
    Transpose(kb, l.kv * l.hd, l.t, l.hd, tp, kt.data());
    Transpose(v + l.KeyRow(b, 0, j), l.kv * l.hd, l.t, l.hd, tp, vt.data());
    std::fill(dk_sum.begin(), dk_sum.end(), 0.0f);
    std::fill(dv_sum.begin(), dv_sum.end(), 0.0f);
    for (int64_t head = j * l.g; head < (j + 1) * l.g; ++head) {
      for (int64_t i = 0; i < l.t; ++i) {
        const int64_t n = i + 1, np = Padded<V>(n), row = l.QueryRow(b, i, head);
        float* pi = p.data() + i * tp;
        float* dsi = ds.data() + i * tp;
        RowTimesTransposed<V>(q + row, kt.data(), tp, l.hd, np, a.scale, pi);
        ExpRow<V>(pi, n, np, lse[(b * l.h + head) * l.t + i]);
        RowTimesTransposed<V>(dout + row, vt.data(), tp, l.hd, np, 1.0f, dsi);  // dP
        const float delta = DotScalar(dout + row, out + row, l.hd);
        V pv, dpv;
        for (int64_t c = 0; c < np; c += L) {
          Load(pv, pi + c), Load(dpv, dsi + c);
          Store(dsi + c, pv * (dpv - delta) * a.scale);
        }
        SumRows<V>(dsi, 1, kb, l.kv * l.hd, n, l.hd, 1.0f, false, dq + row);
      }
      const float* qh = q + l.QueryRow(b, 0, head);
      const float* doh = dout + l.QueryRow(b, 0, head);
      for (int64_t t = 0; t < l.t; ++t) {
        const int64_t rows = l.t - t, at = t * l.h * l.hd;
        SumRows<V>(ds.data() + t * tp + t, tp, qh + at, l.h * l.hd, rows, l.hd, 1.0f, true,
                   dk_sum.data() + t * l.hd);
        SumRows<V>(p.data() + t * tp + t, tp, doh + at, l.h * l.hd, rows, l.hd, 1.0f, true,
                   dv_sum.data() + t * l.hd);
      }
    }
    for (int64_t t = 0; t < l.t; ++t) {
      std::copy_n(dk_sum.data() + t * l.hd, l.hd, dk + l.KeyRow(b, t, j));
      std::copy_n(dv_sum.data() + t * l.hd, l.hd, dv + l.KeyRow(b, t, j));
    }
  }
}

// ---- one entry point per width ---------------------------------------------------------------

void Forward4(const CausalAttention& a, const float* q, const float* k, const float* v, float* out,
              float* lse, int64_t begin, int64_t end) {
  ForwardT<vec::Float4>(a, q, k, v, out, lse, begin, end);
}
void Backward4(const CausalAttention& a, const float* q, const float* k, const float* v,
               const float* out, const float* lse, const float* dout, float* dq, float* dk,
               float* dv, int64_t begin, int64_t end) {
  BackwardT<vec::Float4>(a, q, k, v, out, lse, dout, dq, dk, dv, begin, end);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TANDEM_HAVE_WIDE 1
__attribute__((target("avx2,fma"))) void Forward8(const CausalAttention& a, const float* q,
                                                  const float* k, const float* v, float* out,
                                                  float* lse, int64_t begin, int64_t end) {
  ForwardT<vec::Float8>(a, q, k, v, out, lse, begin, end);
}
__attribute__((target("avx2,fma"))) void Backward8(const CausalAttention& a, const float* q,
                                                   const float* k, const float* v,
                                                   const float* out, const float* lse,
                                                   const float* dout, float* dq, float* dk,
                                                   float* dv, int64_t begin, int64_t end) {
  BackwardT<vec::Float8>(a, q, k, v, out, lse, dout, dq, dk, dv, begin, end);
}
__attribute__((target("avx512f,avx2,fma"))) void Forward16(const CausalAttention& a,
                                                           const float* q, const float* k,
                                                           const float* v, float* out, float* lse,
                                                           int64_t begin, int64_t end) {
  ForwardT<vec::Float16>(a, q, k, v, out, lse, begin, end);
}
__attribute__((target("avx512f,avx2,fma"))) void Backward16(
    const CausalAttention& a, const float* q, const float* k, const float* v, const float* out,
    const float* lse, const float* dout, float* dq, float* dk, float* dv, int64_t begin,
    int64_t end) {
  BackwardT<vec::Float16>(a, q, k, v, out, lse, dout, dq, dk, dv, begin, end);
}
#else
#define TANDEM_HAVE_WIDE 0
#endif

}  // namespace

void CausalAttentionForward(Width width, const CausalAttention& a, const float* q, const float* k,
                            const float* v, float* out, float* lse, int64_t begin, int64_t end) {
#if TANDEM_HAVE_WIDE
  if (width == Width::k16) return Forward16(a, q, k, v, out, lse, begin, end);
  if (width == Width::k8) return Forward8(a, q, k, v, out, lse, begin, end);
#endif
  Forward4(a, q, k, v, out, lse, begin, end);
}

void CausalAttentionBackward(Width width, const CausalAttention& a, const float* q, const float* k,
                             const float* v, const float* out, const float* lse, const float* dout,
                             float* dq, float* dk, float* dv, int64_t begin, int64_t end) {
#if TANDEM_HAVE_WIDE
  if (width == Width::k16) return Backward16(a, q, k, v, out, lse, dout, dq, dk, dv, begin, end);
  if (width == Width::k8) return Backward8(a, q, k, v, out, lse, dout, dq, dk, dv, begin, end);
#endif
  Backward4(a, q, k, v, out, lse, dout, dq, dk, dv, begin, end);
}

}  // namespace tandem::cpu_kernels

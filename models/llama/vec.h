// Portable float vectors for the hand-written CPU kernels (cpu_kernels.cc, train_attention.cc):
// GCC / Clang vector extensions of 4 (SSE2 / NEON, every 64-bit CPU), 8 (AVX2) and 16
// (AVX-512F) lanes, and the few operations the kernels share. Everything here is inline and
// compiled inside each caller's per-width target attribute; include it from kernel .cc files
// only. Every operation has a fixed order of arithmetic, so a result depends on the width and
// the inputs alone.
#ifndef TANDEM_MODELS_LLAMA_VEC_H_
#define TANDEM_MODELS_LLAMA_VEC_H_

#include <cstdint>
#include <cstring>

namespace tandem::vec {

typedef float Float4 __attribute__((vector_size(16)));
typedef float Float8 __attribute__((vector_size(32)));
typedef float Float16 __attribute__((vector_size(64)));

#define TANDEM_INLINE inline __attribute__((always_inline))

template <typename V>
constexpr int64_t Lanes() {
  return sizeof(V) / sizeof(float);
}

// v = the sizeof(V) bytes at p, unaligned. (An out parameter: returning a wide vector from a
// function also compiled without AVX draws -Wpsabi.)
template <typename V>
TANDEM_INLINE void Load(V& v, const float* p) {
  std::memcpy(&v, p, sizeof(V));
}
template <typename V>
TANDEM_INLINE void Store(float* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// The sum of the lanes, halving: a fixed order whatever the caller.
TANDEM_INLINE float HSum(const Float4& v) { return (v[0] + v[2]) + (v[1] + v[3]); }
TANDEM_INLINE float HSum(const Float8& v) {
  Float4 lo, hi;
  std::memcpy(&lo, &v, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
  return HSum(lo + hi);
}
TANDEM_INLINE float HSum(const Float16& v) {
  Float8 lo, hi;
  std::memcpy(&lo, &v, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
  return HSum(lo + hi);
}

// sum_d a[d] * b[d]: two accumulators over whole vectors, then the scalar tail.
template <typename V>
TANDEM_INLINE float Dot(const float* a, const float* b, int64_t n) {
  constexpr int64_t kLanes = Lanes<V>();
  V acc0 = {}, acc1 = {}, a0, b0, a1, b1;
  int64_t d = 0;
  for (; d + 2 * kLanes <= n; d += 2 * kLanes) {
    Load(a0, a + d), Load(b0, b + d), Load(a1, a + d + kLanes), Load(b1, b + d + kLanes);
    acc0 += a0 * b0;
    acc1 += a1 * b1;
  }
  if (d + kLanes <= n) {
    Load(a0, a + d), Load(b0, b + d);
    acc0 += a0 * b0;
    d += kLanes;
  }
  float sum = HSum(acc0 + acc1);
  for (; d < n; ++d) sum += a[d] * b[d];
  return sum;
}

// x = e^x lane by lane, in place (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-5
// polynomial in r, times 2^n built in the exponent bits); relative error under 2e-7 on
// [-87, 88]; inputs below -87.3 (-inf included) give 0, above 88.3 give e^88.3.
// (In place: returning a wide vector draws -Wpsabi, as Load says.)
template <typename V>
TANDEM_INLINE void Exp(V& x) {
  typedef int32_t I __attribute__((vector_size(sizeof(V))));
  const V hi = V{} + 88.3762626647949f, lo = V{} - 87.3365447504f;
  const I underflow = x < lo;
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  // n = round(x / ln2), by floor(x * log2(e) + 0.5).
  V fx = x * 1.44269504088896341f + 0.5f;
  V n = __builtin_convertvector(__builtin_convertvector(fx, I), V);  // truncated toward 0
  n = n > fx ? n - 1.0f : n;                                         // floor
  const V r = x - n * 0.693359375f + n * 2.12194440e-4f;            // x - n ln2, in two parts
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;  // 2^n
  V scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  p *= scale;
  x = underflow ? V{} : p;
}

}  // namespace tandem::vec

#endif  // TANDEM_MODELS_LLAMA_VEC_H_

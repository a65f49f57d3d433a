// Counter-based seeds: the randomness of micro-step m of step s is a pure function of
// (job seed, s, m), so a run restored at step s needs no saved RNG stream. Torch-free.
#ifndef TANDEM_TRAINER_SEEDS_H_
#define TANDEM_TRAINER_SEEDS_H_

#include <cstdint>

namespace tandem {

// SplitMix64's finaliser: a bijective, well-mixed 64-bit hash.
inline uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Distinct streams per purpose (`stream`: 1 data, 2 noise, ...), step and micro-step.
inline uint64_t DeriveSeed(uint64_t seed, uint64_t stream, int64_t step, int64_t micro) {
  return Mix64(Mix64(Mix64(seed ^ (stream << 56)) ^ static_cast<uint64_t>(step)) ^
               static_cast<uint64_t>(micro));
}

// A small deterministic generator for index sampling (xorshift-free: SplitMix64 stream).
class SeededRandom {
 public:
  explicit SeededRandom(uint64_t seed) : state_(seed) {}
  uint64_t Next() { return Mix64(state_++); }
  // Uniform in [0, n) (n > 0); the modulo bias is below 2^-40 for the n used here.
  int64_t Below(int64_t n) { return static_cast<int64_t>(Next() % static_cast<uint64_t>(n)); }
  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(Next() >> 11) * (1.0 / 9007199254740992.0); }

 private:
  uint64_t state_;
};

}  // namespace tandem

#endif  // TANDEM_TRAINER_SEEDS_H_

#include "models/text/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace tandem {
namespace {

// NaN never wins and never gets probability mass: it is treated as -inf.
inline bool Usable(float logit) { return logit > -std::numeric_limits<float>::infinity(); }

// Highest logit, lowest id on ties; 0 when no logit is usable.
int Argmax(const float* logits, int vocab) {
  int best = 0;
  float best_logit = -std::numeric_limits<float>::infinity();
  bool found = false;
  for (int i = 0; i < vocab; ++i) {
    if (Usable(logits[i]) && (!found || logits[i] > best_logit)) {
      best = i;
      best_logit = logits[i];
      found = true;
    }
  }
  return best;
}

// Descending probability, then ascending id: a total order, so every sort and selection below
// is deterministic whatever the standard library's algorithm.
inline bool Before(const std::pair<float, int>& a, const std::pair<float, int>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

}  // namespace

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int Sampler::Sample(const float* logits, int vocab) {
  if (vocab <= 0) return 0;
  // Greedy decoding never consumes randomness (NaN or negative temperatures count as greedy).
  if (!(params_.temperature > 0.0f)) return Argmax(logits, vocab);

  // Exactly one draw per sampled token, taken up front so that the RNG stream (and with it every
  // later token) does not depend on which branch below is taken. The top 53 bits give a double
  // uniform in [0, 1), identical across standard libraries (unlike uniform_real_distribution).
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;

  float max_logit = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < vocab; ++i) {
    if (Usable(logits[i]) && logits[i] > max_logit) max_logit = logits[i];
  }
  if (!Usable(max_logit)) return 0;  // every logit is -inf or NaN: nothing to sample from
  if (max_logit == std::numeric_limits<float>::infinity()) {
    // +inf logits would make exp() produce NaN; they dominate everything, so pick the first.
    for (int i = 0; i < vocab; ++i) {
      if (logits[i] == max_logit) return i;
    }
  }

  // Unnormalised probabilities exp((l - max) / T), in (0, 1]; computed in double so that a tiny
  // temperature cannot overflow the division before the exponent.
  const double inv_temperature = 1.0 / static_cast<double>(params_.temperature);
  scratch_.resize(static_cast<size_t>(vocab));  // keeps its capacity: no allocation after the first
  for (int i = 0; i < vocab; ++i) {
    float p = 0.0f;
    if (Usable(logits[i])) {
      p = static_cast<float>(
          std::exp((static_cast<double>(logits[i]) - max_logit) * inv_temperature));
    }
    scratch_[i] = {p, i};
  }

  auto begin = scratch_.begin();
  size_t n = scratch_.size();
  // top_p <= 0 degenerates to keeping the single most likely token (the limit as top_p -> 0).
  const bool top_p_active = params_.top_p < 1.0f;
  double mass = 0.0;  // total probability of the candidates, the top-p reference

  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n) {
    // Keep the k most likely, sorted: top-p and the draw walk them in order.
    n = static_cast<size_t>(params_.top_k);
    std::partial_sort(begin, begin + n, scratch_.end(), Before);
    for (size_t i = 0; i < n; ++i) mass += scratch_[i].first;
  } else {
    for (const auto& e : scratch_) mass += e.first;
    if (top_p_active) {
      // The nucleus is usually a tiny fraction of the vocabulary: sort a growing head until it
      // holds top_p of the mass instead of sorting everything.
      const double target = static_cast<double>(params_.top_p) * mass;
      size_t k = std::min<size_t>(n, 64);
      for (;;) {
        if (k < n) std::nth_element(begin, begin + k, scratch_.end(), Before);
        std::sort(begin, begin + k, Before);
        double head = 0.0;
        for (size_t i = 0; i < k; ++i) head += scratch_[i].first;
        if (head >= target || k == n) break;
        k = std::min(n, k * 4);
      }
      n = k;  // the nucleus lies inside the sorted head; the cut below finds its exact end
    }
    // Without any cut the draw walks ids in order: as deterministic as probability order, and
    // it saves an O(V log V) sort per token.
  }

  if (top_p_active) {
    // Smallest prefix (in probability order) holding at least top_p of the mass; never empty.
    const double target = static_cast<double>(params_.top_p) * mass;
    double cumulative = 0.0;
    size_t keep = 0;
    while (keep < n) {
      cumulative += scratch_[keep].first;
      ++keep;
      if (cumulative >= target) break;
    }
    n = std::max<size_t>(keep, 1);
  }

  double total = 0.0;
  for (size_t i = 0; i < n; ++i) total += scratch_[i].first;
  const double threshold = u * total;
  double cumulative = 0.0;
  int last_positive = scratch_[0].second;
  for (size_t i = 0; i < n; ++i) {
    if (scratch_[i].first <= 0.0f) continue;
    cumulative += scratch_[i].first;
    last_positive = scratch_[i].second;
    if (threshold < cumulative) return scratch_[i].second;
  }
  // Rounding can leave threshold a hair above the final sum; the last candidate absorbs it.
  return last_positive;
}

}  // namespace tandem

// Sampler: picks the next token from one row of logits. Torch-free, no allocation per call after
// the first. Determinism: the result depends only on the logits, the params and how many tokens
// this sampler drew before, so a sequence generates the same text whatever is batched beside it.
#ifndef TANDEM_MODELS_TEXT_SAMPLER_H_
#define TANDEM_MODELS_TEXT_SAMPLER_H_

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace tandem {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id on ties)
  int top_k = 0;             // 0: no top-k cut
  float top_p = 1.0f;        // 1: no nucleus cut
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits: `vocab` floats. Applies temperature, then top-k, then top-p (on the probabilities
  // after top-k, renormalised), then draws one token with this sampler's RNG.
  int Sample(const float* logits, int vocab);
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int>> scratch_;  // (prob, id)
};

}  // namespace tandem

#endif  // TANDEM_MODELS_TEXT_SAMPLER_H_

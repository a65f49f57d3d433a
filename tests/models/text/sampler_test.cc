#include "models/text/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace tandem {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

SamplingParams Params(float temperature, int top_k = 0, float top_p = 1.0f, uint64_t seed = 0) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = seed;
  return p;
}

std::vector<double> Softmax(const std::vector<float>& logits, double temperature) {
  double max = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) sum += p[i] = std::exp((logits[i] - max) / temperature);
  for (double& x : p) x /= sum;
  return p;
}

std::vector<double> Frequencies(Sampler& sampler, const std::vector<float>& logits, int draws) {
  std::vector<double> f(logits.size());
  for (int i = 0; i < draws; ++i) {
    int id = sampler.Sample(logits.data(), static_cast<int>(logits.size()));
    EXPECT_GE(id, 0);
    EXPECT_LT(id, static_cast<int>(logits.size()));
    f[id] += 1.0 / draws;
  }
  return f;
}

void ExpectNear(const std::vector<double>& actual, const std::vector<double>& expected,
                double tolerance) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    EXPECT_NEAR(actual[i], expected[i], tolerance) << "token " << i;
  }
}

std::vector<float> RandomLogits(int vocab, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::vector<float> logits(vocab);
  // Exact, library-independent values: a fixed transform of raw engine output.
  for (float& l : logits) l = scale * static_cast<float>((rng() >> 40) * 0x1.0p-24 - 0.5);
  return logits;
}

TEST(SamplerTest, GreedyIsArgmaxWithLowestIdOnTies) {
  Sampler s(Params(0.0f));
  const std::vector<float> a = {0.1f, 2.0f, -1.0f, 1.9f};
  EXPECT_EQ(s.Sample(a.data(), 4), 1);
  const std::vector<float> ties = {1.0f, 3.0f, 3.0f, 3.0f};
  EXPECT_EQ(s.Sample(ties.data(), 4), 1);
  const std::vector<float> negative = {-5.0f, -3.0f, -4.0f};
  EXPECT_EQ(s.Sample(negative.data(), 3), 1);
  const std::vector<float> nan = {kNaN, 1.0f, kNaN, 2.0f};
  EXPECT_EQ(s.Sample(nan.data(), 4), 3);
  const std::vector<float> all_bad = {-kInf, kNaN, -kInf};
  EXPECT_EQ(s.Sample(all_bad.data(), 3), 0);
  const std::vector<float> inf = {1.0f, kInf, kInf};
  EXPECT_EQ(s.Sample(inf.data(), 3), 1);
  // top-k / top-p / seed are irrelevant at temperature 0.
  Sampler t(Params(0.0f, 3, 0.5f, 99));
  EXPECT_EQ(t.Sample(a.data(), 4), 1);
}

TEST(SamplerTest, SameSeedSameSequenceDifferentSeedsDiffer) {
  const std::vector<float> logits = RandomLogits(100, 1, 2.0f);
  for (const SamplingParams& p :
       {Params(1.0f, 0, 1.0f, 42), Params(0.8f, 20, 1.0f, 42), Params(1.2f, 0, 0.9f, 42),
        Params(1.0f, 50, 0.95f, 42)}) {
    Sampler a(p), b(p);
    SamplingParams other = p;
    other.seed = 43;
    Sampler c(other);
    std::vector<int> sa, sb, sc;
    for (int i = 0; i < 64; ++i) {
      sa.push_back(a.Sample(logits.data(), 100));
      sb.push_back(b.Sample(logits.data(), 100));
      sc.push_back(c.Sample(logits.data(), 100));
    }
    EXPECT_EQ(sa, sb);
    EXPECT_NE(sa, sc);
  }
}

// One RNG draw per token, u = top 53 bits / 2^53, walked over the candidates: with uniform
// logits every token has mass 1, so the pick is exactly floor(u * vocab).
TEST(SamplerTest, UsesExactlyOneDrawPerTokenFromTheTop53Bits) {
  const int vocab = 10;
  const std::vector<float> uniform(vocab, 0.5f);
  for (const SamplingParams& p : {Params(1.0f, 0, 1.0f, 5), Params(3.0f, 0, 1.0f, 5),
                                  Params(1.0f, 0, 0.999999f, 5)}) {
    Sampler sampler(p);
    std::mt19937_64 reference(5);
    for (int i = 0; i < 200; ++i) {
      const double u = static_cast<double>(reference() >> 11) * 0x1.0p-53;
      EXPECT_EQ(sampler.Sample(uniform.data(), vocab), static_cast<int>(u * vocab)) << i;
    }
  }
}

TEST(SamplerTest, TopK1IsGreedyAtAnyTemperature) {
  const std::vector<float> logits = RandomLogits(1000, 3, 4.0f);
  Sampler greedy(Params(0.0f));
  const int expected = greedy.Sample(logits.data(), 1000);
  for (float temperature : {0.01f, 0.5f, 1.0f, 10.0f, 1000.0f}) {
    Sampler s(Params(temperature, 1, 1.0f, 11));
    for (int i = 0; i < 50; ++i) EXPECT_EQ(s.Sample(logits.data(), 1000), expected);
  }
  // With a tie at the top, top-1 keeps the lower id, like greedy.
  const std::vector<float> ties = {0.0f, 5.0f, 1.0f, 5.0f};
  Sampler s(Params(100.0f, 1, 1.0f, 3));
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s.Sample(ties.data(), 4), 1);
}

TEST(SamplerTest, TinyTopPIsGreedy) {
  const std::vector<float> logits = RandomLogits(5000, 4, 3.0f);
  Sampler greedy(Params(0.0f));
  const int expected = greedy.Sample(logits.data(), 5000);
  for (float top_p : {1e-6f, 0.0f}) {
    Sampler s(Params(2.0f, 0, top_p, 9));
    for (int i = 0; i < 50; ++i) EXPECT_EQ(s.Sample(logits.data(), 5000), expected);
  }
}

TEST(SamplerTest, FrequenciesMatchSoftmax) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f, 0.5f, -1.0f};
  constexpr int kDraws = 200000;  // standard error <= 0.0012
  Sampler s(Params(1.0f, 0, 1.0f, 2024));
  ExpectNear(Frequencies(s, logits, kDraws), Softmax(logits, 1.0), 0.006);
}

TEST(SamplerTest, TemperatureScalesLogits) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f, 0.5f, -1.0f};
  constexpr int kDraws = 200000;
  Sampler hot(Params(2.0f, 0, 1.0f, 1));
  ExpectNear(Frequencies(hot, logits, kDraws), Softmax(logits, 2.0), 0.006);
  Sampler cold(Params(0.25f, 0, 1.0f, 1));
  ExpectNear(Frequencies(cold, logits, kDraws), Softmax(logits, 0.25), 0.006);
}

TEST(SamplerTest, TopKRenormalisesOverTheKLargest) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f, 0.5f, 2.5f};
  Sampler s(Params(1.0f, 2, 1.0f, 77));
  std::vector<double> expected(5, 0.0);
  const double a = std::exp(3.0), b = std::exp(2.5);
  expected[2] = a / (a + b);
  expected[4] = b / (a + b);
  ExpectNear(Frequencies(s, logits, 100000), expected, 0.006);
}

TEST(SamplerTest, TopPKeepsTheSmallestSufficientPrefix) {
  // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps {0.5, 0.3}, renormalised 0.625/0.375.
  const std::vector<float> logits = {std::log(0.15f), std::log(0.5f), std::log(0.05f),
                                     std::log(0.3f)};
  Sampler s(Params(1.0f, 0, 0.7f, 5));
  ExpectNear(Frequencies(s, logits, 100000), {0.0, 0.625, 0.0, 0.375}, 0.006);
  // top_p 0.9 needs the third token as well.
  Sampler t(Params(1.0f, 0, 0.9f, 5));
  ExpectNear(Frequencies(t, logits, 100000), {0.15 / 0.95, 0.5 / 0.95, 0.0, 0.3 / 0.95}, 0.006);
  // top-k first, then top-p on the renormalised top-k: top_k 2 gives 0.625/0.375, and
  // top_p 0.6 then keeps only the first.
  Sampler u(Params(1.0f, 2, 0.6f, 5));
  ExpectNear(Frequencies(u, logits, 20000), {0.0, 1.0, 0.0, 0.0}, 1e-12);
}

// The straightforward algorithm (sort everything, cut, draw) on the same probabilities; the
// sampler's partial sorts must pick exactly the same tokens.
int ReferenceSample(const std::vector<float>& logits, const SamplingParams& p, double u) {
  float max = -kInf;
  for (float l : logits) max = std::max(max, l);
  std::vector<std::pair<float, int>> probs;
  for (size_t i = 0; i < logits.size(); ++i) {
    probs.push_back({static_cast<float>(std::exp((static_cast<double>(logits[i]) - max) *
                                                 (1.0 / static_cast<double>(p.temperature)))),
                     static_cast<int>(i)});
  }
  double mass = 0;
  for (const auto& e : probs) mass += e.first;  // id order, as the sampler sums it
  std::sort(probs.begin(), probs.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  size_t n = probs.size();
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < n) {
    n = p.top_k;
    mass = 0;
    for (size_t i = 0; i < n; ++i) mass += probs[i].first;
  }
  if (p.top_p < 1.0f) {
    double cumulative = 0;
    size_t keep = 0;
    while (keep < n) {
      cumulative += probs[keep].first;
      ++keep;
      if (cumulative >= p.top_p * mass) break;
    }
    n = keep;
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += probs[i].first;
  double cumulative = 0;
  for (size_t i = 0; i < n; ++i) {
    cumulative += probs[i].first;
    if (u * total < cumulative) return probs[i].second;
  }
  return probs[n - 1].second;
}

TEST(SamplerTest, MatchesFullSortReferenceOnLargeVocabularies) {
  const int vocab = 32000;
  for (const SamplingParams& p :
       {Params(1.0f, 0, 0.9f, 1), Params(0.7f, 0, 0.5f, 2), Params(1.5f, 0, 0.99f, 3),
        Params(1.0f, 40, 1.0f, 4), Params(1.0f, 200, 0.8f, 5), Params(2.0f, 5000, 0.95f, 6)}) {
    Sampler sampler(p);
    std::mt19937_64 reference(p.seed);
    for (int step = 0; step < 20; ++step) {
      const std::vector<float> logits = RandomLogits(vocab, 100 + step, 12.0f);
      const double u = static_cast<double>(reference() >> 11) * 0x1.0p-53;
      EXPECT_EQ(sampler.Sample(logits.data(), vocab), ReferenceSample(logits, p, u))
          << "top_k " << p.top_k << " top_p " << p.top_p << " step " << step;
    }
  }
}

TEST(SamplerTest, NeverSamplesNaNOrMinusInfinity) {
  const std::vector<float> logits = {kNaN, 0.0f, -kInf, 0.0f, kNaN};
  Sampler s(Params(1.0f, 0, 1.0f, 8));
  std::vector<double> f = Frequencies(s, logits, 20000);
  EXPECT_EQ(f[0], 0.0);
  EXPECT_EQ(f[2], 0.0);
  EXPECT_EQ(f[4], 0.0);
  EXPECT_NEAR(f[1], 0.5, 0.02);

  const std::vector<float> all_bad = {kNaN, -kInf, kNaN};
  EXPECT_EQ(s.Sample(all_bad.data(), 3), 0);
  const std::vector<float> plus_inf = {0.0f, 1.0f, kInf, 2.0f};
  EXPECT_EQ(s.Sample(plus_inf.data(), 4), 2);
}

TEST(SamplerTest, ExtremeTemperaturesStayFinite) {
  const std::vector<float> logits = {100.0f, -100.0f, 99.0f};
  Sampler cold(Params(1e-6f, 0, 1.0f, 1));
  for (int i = 0; i < 100; ++i) EXPECT_EQ(cold.Sample(logits.data(), 3), 0);
  Sampler hot(Params(1e6f, 0, 1.0f, 1));
  ExpectNear(Frequencies(hot, logits, 60000), {1.0 / 3, 1.0 / 3, 1.0 / 3}, 0.01);
}

}  // namespace
}  // namespace tandem

#include "tests/testing/base/text_corpus.h"

#include <cstdint>
#include <string>

namespace tandem::testing {

// A deterministic English-ish corpus: a few hundred lines, with digits, punctuation, accented
// words (learned as pieces) and whitespace runs. CJK and emoji never occur in it, so those only
// ever encode through byte fallback.
std::string EnglishishCorpus() {
  static const char* const kWords[] = {
      "the",   "a",     "model", "token", "stream", "server", "train", "loss", "step", "batch",
      "learn", "rate",  "of",    "and",   "to",     "in",     "is",    "was",  "with", "for",
      "that",  "it",    "on",    "as",    "café",   "naïve",  "über",  "déjà", "vu",   "hello",
      "world", "again", "quick", "brown", "fox",    "jumps",  "over",  "lazy", "dog",  "GPU",
      "value", "layer", "head",  "query", "key",    "cache",  "text",  "line"};
  constexpr int kNumWords = sizeof(kWords) / sizeof(kWords[0]);
  uint64_t state = 12345;
  auto next = [&state](uint64_t n) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (state >> 33) % n;
  };
  std::string corpus;
  for (int line = 0; line < 400; ++line) {
    const int words = 4 + static_cast<int>(next(12));
    for (int w = 0; w < words; ++w) {
      if (w > 0) corpus += next(10) == 0 ? "  " : " ";
      switch (next(12)) {
        case 0:
          corpus += std::to_string(next(100000));
          break;
        case 1:
          corpus += std::string(kWords[next(kNumWords)]) + ",";
          break;
        default:
          corpus += kWords[next(kNumWords)];
      }
    }
    corpus += next(3) == 0 ? "!\n" : ".\n";
  }
  return corpus;
}

}  // namespace tandem::testing

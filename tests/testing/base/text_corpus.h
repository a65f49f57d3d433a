// Text corpora for the tokenizer tests. Torch-free.
#ifndef TANDEM_TESTS_TESTING_BASE_TEXT_CORPUS_H_
#define TANDEM_TESTS_TESTING_BASE_TEXT_CORPUS_H_

#include <string>

namespace tandem::testing {

// A deterministic English-ish corpus: a few hundred lines, with digits, punctuation, accented
// words (learned as pieces) and whitespace runs. CJK and emoji never occur in it, so those only
// ever encode through byte fallback.
std::string EnglishishCorpus();

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_BASE_TEXT_CORPUS_H_

// Matchers for the tests: gmock is not linked into the suites, so the checks they share are
// gtest AssertionResults with a readable failure. Torch-free.
#ifndef TANDEM_TESTS_TESTING_BASE_MATCHERS_H_
#define TANDEM_TESTS_TESTING_BASE_MATCHERS_H_

#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace tandem::testing {

// Success when `text` contains `part`; the failure quotes both.
::testing::AssertionResult Contains(absl::string_view text, absl::string_view part);

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_BASE_MATCHERS_H_

// What the benchmark programs share that needs only the standard library and absl::Status: the
// clock, elapsed seconds, and the failure exit (the message on stderr, exit status 1).
#ifndef TANDEM_BENCH_BENCH_UTIL_H_
#define TANDEM_BENCH_BENCH_UTIL_H_

#include <chrono>
#include <cstdio>

#include "absl/status/status.h"

namespace tandem::bench {

using Clock = std::chrono::steady_clock;

inline double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Prints "program: status" to stderr; returns main's exit status.
inline int Fail(const char* program, const absl::Status& status) {
  std::fprintf(stderr, "%s: %s\n", program, status.ToString().c_str());
  return 1;
}

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_BENCH_UTIL_H_

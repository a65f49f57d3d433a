// Counts of the streaming calls' reactors (Generate, WatchTrainJob) created and destroyed, so
// tests can prove that every reactor the server creates is destroyed — after cancels, deadlines,
// clients that vanish and shutdown alike. Every build counts (two relaxed atomic increments per
// call); a reactor derives from CountedReactor. Thread-safe.
#ifndef TANDEM_SERVER_API_REACTOR_COUNT_H_
#define TANDEM_SERVER_API_REACTOR_COUNT_H_

#include <atomic>
#include <cstdint>

namespace tandem {

struct ReactorCounts {
  int64_t created = 0;
  int64_t destroyed = 0;
  int64_t live() const { return created - destroyed; }
};

namespace internal {
inline std::atomic<int64_t> reactors_created{0};
inline std::atomic<int64_t> reactors_destroyed{0};
}  // namespace internal

inline ReactorCounts GetReactorCounts() {
  // Destroyed first: a reactor destroyed between the two loads can only make live() larger.
  const int64_t destroyed = internal::reactors_destroyed.load(std::memory_order_acquire);
  return ReactorCounts{internal::reactors_created.load(std::memory_order_acquire), destroyed};
}

class CountedReactor {
 public:
  CountedReactor() { internal::reactors_created.fetch_add(1, std::memory_order_relaxed); }
  ~CountedReactor() { internal::reactors_destroyed.fetch_add(1, std::memory_order_release); }
  CountedReactor(const CountedReactor&) = delete;
  CountedReactor& operator=(const CountedReactor&) = delete;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_API_REACTOR_COUNT_H_

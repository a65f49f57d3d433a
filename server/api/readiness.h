// Readiness: whether tandemd takes work — kLoading (models being read; the gRPC port answers
// health NOT_SERVING and every other call UNAVAILABLE), kServing, or kDraining (shutdown began:
// health NOT_SERVING, new calls refused, streams in flight finishing). GET /readyz on the
// metrics port answers from it; /healthz only says the process is alive. Thread-safe.
#ifndef TANDEM_SERVER_API_READINESS_H_
#define TANDEM_SERVER_API_READINESS_H_

#include <atomic>

#include "absl/status/status.h"

namespace tandem {

class Readiness {
 public:
  enum class State { kLoading, kServing, kDraining };

  void Set(State state) { state_.store(state); }
  State state() const { return state_.load(); }
  // OK while serving; UNAVAILABLE saying why otherwise.
  absl::Status Check() const {
    switch (state()) {
      case State::kServing: return absl::OkStatus();
      case State::kLoading: return absl::UnavailableError("tandemd is loading its models");
      case State::kDraining: return absl::UnavailableError("tandemd is shutting down");
    }
    return absl::UnavailableError("unknown state");
  }

 private:
  std::atomic<State> state_{State::kLoading};
};

}  // namespace tandem

#endif  // TANDEM_SERVER_API_READINESS_H_

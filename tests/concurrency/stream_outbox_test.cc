// StreamOutbox under concurrency, as the server runs it: several producers (device loops, the
// job manager) Send and Finish while a transport thread completes writes (some failing, as when
// a client vanishes) and a cancel may arrive at any moment. Whatever the interleaving: at most
// one write is in flight, each producer's responses go out in its order, Close comes exactly
// once and last, and nothing is written after it or after Detach. Run under ThreadSanitizer in
// CI (scripts/sanitize.sh).
#include "server/api/stream_outbox.h"

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using Outbox = StreamOutbox<std::string>;

// gRPC's side: writes complete on a thread of its own, in order, maybe failing.
class FakeTransport final : public Outbox::Writer {
 public:
  explicit FakeTransport(int fail_after) : fail_after_(fail_after) {}

  void Attach(Outbox* outbox) { outbox_ = outbox; }
  void Write(const std::string* response) override {
    absl::MutexLock lock(&mu_);
    EXPECT_FALSE(closed_) << "a write after Close";
    EXPECT_EQ(in_flight_, 0) << "two writes in flight";
    ++in_flight_;
    written_.push_back(*response);
    pending_.push_back(static_cast<int>(written_.size()) <= fail_after_ || fail_after_ < 0);
  }
  void Close(grpc::Status status) override {
    absl::MutexLock lock(&mu_);
    EXPECT_EQ(in_flight_, 0) << "Close with a write in flight";
    ++closes_;
    closed_ = true;
    status_ = std::move(status);
  }
  // The transport thread: completes writes until `stop`.
  void Run(const std::atomic<bool>& stop) {
    while (true) {
      bool ok;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !pending_.empty(); };
        if (!mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(1))) {
          if (stop.load()) return;
          continue;
        }
        ok = pending_.front();
        pending_.pop_front();
        --in_flight_;
      }
      outbox_->OnWriteDone(ok);
    }
  }

  absl::Mutex mu_;
  Outbox* outbox_ = nullptr;
  const int fail_after_;  // writes after this many fail (-1: none)
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<bool> pending_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> written_ ABSL_GUARDED_BY(mu_);
  int closes_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

TEST(StreamOutboxConcurrencyTest, AnyInterleavingEndsOnceInOrderWithOneWriteInFlight) {
  std::mt19937 rng(7);
  constexpr int kProducers = 3, kMessages = 40, kRounds = 200;
  for (int round = 0; round < kRounds; ++round) {
    const bool cancel = rng() % 3 == 0;
    const int fail_after = rng() % 4 == 0 ? static_cast<int>(rng() % 30) : -1;
    FakeTransport transport(fail_after);
    auto outbox = std::make_shared<Outbox>(&transport);
    transport.Attach(outbox.get());
    std::atomic<bool> stop{false};
    std::thread io([&] { transport.Run(stop); });
    std::atomic<int> done{0};
    std::vector<std::thread> producers;
    for (int p = 0; p < kProducers; ++p) {
      producers.emplace_back([&, p] {
        for (int i = 0; i < kMessages; ++i) {
          outbox->Send(absl::StrCat(p, ":", i));
          if (outbox->cancelled()) break;
        }
        if (done.fetch_add(1) + 1 == kProducers) outbox->Finish(absl::OkStatus());
      });
    }
    std::thread canceller;
    if (cancel) {
      const int wait_us = static_cast<int>(rng() % 300);
      canceller = std::thread([&, wait_us] {
        std::this_thread::sleep_for(std::chrono::microseconds(wait_us));
        outbox->OnCancel();
      });
    }
    for (auto& t : producers) t.join();
    if (canceller.joinable()) canceller.join();
    // Close comes once everything queued has been written (or dropped on a failure/cancel).
    auto closed = [&] {
      absl::MutexLock lock(&transport.mu_);
      return transport.closes_ > 0;
    };
    for (int i = 0; i < 20000 && !closed(); ++i) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    stop = true;
    io.join();
    outbox->Detach();  // OnDone
    outbox->Send("after-detach");
    outbox->Finish(absl::InternalError("after detach"));

    absl::MutexLock lock(&transport.mu_);
    ASSERT_EQ(transport.closes_, 1) << "round " << round;
    std::vector<int> next(kProducers, 0);
    for (const std::string& w : transport.written_) {
      std::vector<std::string> parts = absl::StrSplit(w, ':');
      ASSERT_EQ(parts.size(), 2u) << w;
      int p = 0, i = 0;
      ASSERT_TRUE(absl::SimpleAtoi(parts[0], &p) && absl::SimpleAtoi(parts[1], &i));
      EXPECT_EQ(i, next[p]) << "producer " << p << " out of order in round " << round;
      next[p] = i + 1;
    }
    const bool broken = fail_after >= 0 && static_cast<int>(transport.written_.size()) > fail_after;
    if (!cancel && !broken) {
      EXPECT_TRUE(transport.status_.ok()) << transport.status_.error_message();
      for (int p = 0; p < kProducers; ++p) EXPECT_EQ(next[p], kMessages);
    } else if (!transport.status_.ok()) {
      EXPECT_EQ(transport.status_.error_code(), grpc::StatusCode::CANCELLED);
    }
  }
}

}  // namespace
}  // namespace tandem

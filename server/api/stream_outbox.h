// StreamOutbox: the outbox of one server-streaming call (Generate, WatchTrainJob). Producers
// (device loops, the training manager) Send responses and Finish from any thread, never
// blocking; the call's reactor drains the outbox with one write in flight. Shared ownership: the
// producer and the reactor each hold a reference, so either side may end first; once the reactor
// is done (Detach), Send and Finish are dropped.
//
// Invariant: the Writer's Write and Close are called without the outbox's lock held (a Close
// may run the reactor's OnDone inline), and Close is called once, only when no write is in
// flight and the queue is drained. Thread-safe.
#ifndef TANDEM_SERVER_API_STREAM_OUTBOX_H_
#define TANDEM_SERVER_API_STREAM_OUTBOX_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <deque>
#include <functional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace tandem {

// absl::Status -> grpc::Status (the codes share their numbering).
inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

template <typename Response>
class StreamOutbox {
 public:
  // The reactor's side, as the outbox sees it.
  class Writer {
   public:
    virtual ~Writer() = default;
    virtual void Write(const Response* response) = 0;  // StartWrite
    virtual void Close(grpc::Status status) = 0;       // Finish
  };
  // Folds `next` into the queued `last` when it returns true (e.g. coalescing text deltas for a
  // slow reader); null: every response is queued.
  using Merge = std::function<bool(Response& last, Response& next)>;

  explicit StreamOutbox(Writer* writer, Merge merge = nullptr)
      : writer_(writer), merge_(std::move(merge)) {}

  void Send(Response response) {
    Writer* to_write = nullptr;
    {
      absl::MutexLock lock(&mu_);
      if (writer_ == nullptr || finish_requested_) return;
      if (queue_.empty() || !merge_ || !merge_(queue_.back(), response)) {
        queue_.push_back(std::move(response));
      }
      to_write = NextWriteLocked();
    }
    if (to_write) to_write->Write(&current_);
  }

  // Ends the call with `status` after everything queued so far. Only the first call counts.
  void Finish(const absl::Status& status) {
    Writer* to_finish = nullptr;
    {
      absl::MutexLock lock(&mu_);
      if (writer_ == nullptr || finish_requested_) return;
      finish_requested_ = true;
      final_status_ = ToGrpcStatus(status);
      if (!writing_) to_finish = TakeFinishLocked();
    }
    if (to_finish) to_finish->Close(final_status_);
  }

  // True once the client cancelled, its deadline passed, or the stream broke.
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

  // --- reactor side ---
  void OnWriteDone(bool ok) {
    Writer* to_write = nullptr;
    Writer* to_finish = nullptr;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        // The stream broke (client gone): stop the work, end the call — CANCELLED, also when the
        // producer had finished: the client did not get everything.
        cancelled_.store(true, std::memory_order_release);
        queue_.clear();
        if (!finished_) {
          finish_requested_ = true;
          final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
        }
      }
      to_write = NextWriteLocked();
      if (!to_write && finish_requested_) to_finish = TakeFinishLocked();
    }
    if (to_write) to_write->Write(&current_);
    if (to_finish) to_finish->Close(final_status_);
  }

  void OnCancel() {
    cancelled_.store(true, std::memory_order_release);
    Writer* to_finish = nullptr;
    {
      absl::MutexLock lock(&mu_);
      queue_.clear();
      // CANCELLED, also when the producer had finished but its responses were still unsent.
      if (!finished_) {
        finish_requested_ = true;
        final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled");
      }
      // With a write in flight, OnWriteDone(false) follows and finishes.
      if (!writing_) to_finish = TakeFinishLocked();
    }
    if (to_finish) to_finish->Close(final_status_);
  }

  // The reactor is gone (OnDone): drop everything from now on.
  void Detach() {
    absl::MutexLock lock(&mu_);
    writer_ = nullptr;
  }

 private:
  Writer* NextWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_ || queue_.empty() || writer_ == nullptr) return nullptr;
    current_ = std::move(queue_.front());
    queue_.pop_front();
    writing_ = true;
    return writer_;
  }
  Writer* TakeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_ || !queue_.empty() || writer_ == nullptr) return nullptr;
    finished_ = true;
    return writer_;
  }

  absl::Mutex mu_;
  Writer* writer_ ABSL_GUARDED_BY(mu_);
  const Merge merge_;
  std::deque<Response> queue_ ABSL_GUARDED_BY(mu_);
  Response current_;  // the message being written; touched only by the writer
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Close has been called
  grpc::Status final_status_;  // written before finished_ is set, read by that caller only
  std::atomic<bool> cancelled_{false};
};

}  // namespace tandem

#endif  // TANDEM_SERVER_API_STREAM_OUTBOX_H_

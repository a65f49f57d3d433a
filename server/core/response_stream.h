// ResponseStream: the outbox of one Generate call. A device loop produces into it; the gRPC
// reactor (inference_service.cc) drains it with one write in flight. Shared ownership: the loop
// and the reactor each hold a reference, so either side may finish first. Thread-safe.
#ifndef TANDEM_SERVER_CORE_RESPONSE_STREAM_H_
#define TANDEM_SERVER_CORE_RESPONSE_STREAM_H_

#include "absl/status/status.h"
#include "tandem/v1/inference.pb.h"

namespace tandem {

class ResponseStream {
 public:
  virtual ~ResponseStream() = default;
  // Queues a response for the client; never blocks. Dropped once the call has ended.
  virtual void Send(tandem::v1::GenerateResponse response) = 0;
  // Ends the call with `status` after everything queued so far. Only the first call counts.
  virtual void Finish(const absl::Status& status) = 0;
  // True once the client cancelled, its deadline passed, or the server gave up on the call:
  // the producer should stop working on it and Finish.
  virtual bool cancelled() const = 0;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_RESPONSE_STREAM_H_

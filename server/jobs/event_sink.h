// JobEventSink: where a training job's events go — one per WatchTrainJob call. The front end
// implements it over the call's outbox; the job manager sends into it from its threads. Send and
// Finish never block; after Finish (or once cancelled) further calls are dropped. Thread-safe.
#ifndef TANDEM_SERVER_JOBS_EVENT_SINK_H_
#define TANDEM_SERVER_JOBS_EVENT_SINK_H_

#include "absl/status/status.h"

namespace tandem {

template <typename Event>
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void Send(Event event) = 0;
  // Ends the stream with `status` after everything sent so far. Only the first call counts.
  virtual void Finish(const absl::Status& status) = 0;
  // True once the watcher went away: stop sending.
  virtual bool cancelled() const = 0;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_JOBS_EVENT_SINK_H_

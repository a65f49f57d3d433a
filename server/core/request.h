// Requests as a device runs them, and what goes back to their callers. The front end
// (server/api) validates a Generate call into a TextRequest or ImageRequest and gives it a
// ResponseStream; a device loop produces GenerateEvents into the stream and ends it. Proto-free:
// the front end converts events to tandem.v1 messages.
#ifndef TANDEM_SERVER_CORE_REQUEST_H_
#define TANDEM_SERVER_CORE_REQUEST_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "models/image_model.h"
#include "models/text/sampler.h"
#include "server/core/model_registry.h"

namespace tandem {

// New text of a completion (possibly empty when a token ends inside a UTF-8 character), with
// the ids it decodes from when the caller asked for them.
struct TextDelta {
  std::string text;
  std::vector<int32_t> token_ids;
};

struct ImageProgress {
  int step = 0;   // 1-based step just completed
  int total = 0;
  std::string preview_png;  // empty unless a preview is due
};

struct ImageOutput {
  std::string png;
  int width = 0;
  int height = 0;
  uint64_t seed = 0;
  int index = 0;
};

// Numbered as tandem.v1.Finished.Reason.
enum class FinishReason { kLength = 1, kStop = 2, kEos = 3, kCancelled = 4, kComplete = 5 };

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int images = 0;
  int steps = 0;
  double queue_seconds = 0;
  double time_to_first_token_seconds = 0;  // first token (text) or first step (image)
  double total_seconds = 0;
};

struct Finished {
  FinishReason reason = FinishReason::kComplete;
  std::string request_id;
  uint64_t seed = 0;
  std::string model;
  int64_t model_version = 0;
  Usage usage;
};

using GenerateEvent = std::variant<TextDelta, ImageProgress, ImageOutput, Finished>;

// The outbox of one Generate call. A device loop produces into it; the front end drains it to
// the client. Shared ownership: the loop and the front end each hold a reference, so either side
// may finish first. Thread-safe.
class ResponseStream {
 public:
  virtual ~ResponseStream() = default;
  // Queues an event for the client; never blocks. Dropped once the call has ended.
  virtual void Send(GenerateEvent event) = 0;
  // Ends the call with `status` after everything queued so far. Only the first call counts.
  virtual void Finish(const absl::Status& status) = 0;
  // True once the client cancelled, its deadline passed, or the server gave up on the call:
  // the producer should stop working on it and Finish.
  virtual bool cancelled() const = 0;
};

// What every request on a device has.
struct DeviceRequest {
  std::string id;  // the caller's request_id, or one the server chose
  std::shared_ptr<const ModelEntry> model;
  int priority = 0;  // higher first
  absl::Time accepted;
  std::shared_ptr<ResponseStream> stream;
  std::function<void()> on_done;  // called once when the request leaves the device (any reason)
  // Held while the request waits for a device: counts it in its model's queue (WorkerPool's
  // per-model cap). Dropped when a workload admits the request, or with the request.
  std::shared_ptr<void> queue_ticket;

  // Ends the request: the stream with `status`, then on_done (once, whoever calls).
  void End(const absl::Status& status) {
    stream->Finish(status);
    if (on_done) {
      auto fn = std::move(on_done);
      on_done = nullptr;
      fn();
    }
  }
};

// One validated text generation request.
struct TextRequest : DeviceRequest {
  std::vector<int32_t> prompt;  // BOS + the encoded prompt
  SamplingParams sampling;      // seed already chosen
  int max_tokens = 0;           // >= 1; prompt.size() + max_tokens <= seq_len
  std::vector<std::string> stop;
  bool include_token_ids = false;
};

// One validated image request.
struct ImageRequest : DeviceRequest {
  ImageSampleSpec spec;  // seed of image i is spec.seed + i
  int num_images = 1;
  int preview_every = 0;
  int prompt_tokens = 0;
  // Caption tokens cut to fit the text encoder (reported to the caller).
  int prompt_tokens_truncated = 0;
  int negative_prompt_tokens_truncated = 0;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_REQUEST_H_

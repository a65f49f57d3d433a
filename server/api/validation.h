// Request validation: everything a Generate request can get wrong is caught here, before any
// work is queued, with a status the caller can act on (INVALID_ARGUMENT naming the field and the
// limit). Pure functions; thread-safe.
#ifndef TANDEM_SERVER_API_VALIDATION_H_
#define TANDEM_SERVER_API_VALIDATION_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/core/model_registry.h"
#include "server/core/request.h"
#include "tandem/v1/inference.pb.h"

namespace tandem {

// Bounds of one request, each a tandemd flag. Bytes are checked before anything is tokenized,
// so an oversized request costs nothing but its parse.
struct RequestLimits {
  int max_stop_strings = 8;
  int max_stop_bytes = 256;
  int max_prompt_bytes = 64 << 10;  // text prompts
  int max_caption_bytes = 1024;     // image prompts and negative prompts
  int max_request_id_bytes = 128;
  int max_images = 8;      // images per request
  int max_steps = 1000;    // denoising steps per request (also at most the model's T)
};

// Validates `request` against the text model `model` and builds the device-ready request:
// tokenized prompt (BOS first), sampling parameters (a random seed drawn when unset), limits.
// The caller sets `id` and `stream`.
absl::StatusOr<std::unique_ptr<TextRequest>> BuildTextRequest(
    const tandem::v1::GenerateRequest& request, std::shared_ptr<const ModelEntry> model,
    const RequestLimits& limits, absl::Time accepted);

// The same for an image model: steps, guidance, sampler, eta, images, preview cadence; the
// caption and negative caption tokenized. A caption (or negative caption) longer than the text
// encoder reads keeps its first text_seq_len - 1 tokens (after BOS); the number cut is in
// prompt_tokens_truncated / negative_prompt_tokens_truncated, which the response reports.
absl::StatusOr<std::unique_ptr<ImageRequest>> BuildImageRequest(
    const tandem::v1::GenerateRequest& request, std::shared_ptr<const ModelEntry> model,
    const RequestLimits& limits, absl::Time accepted);

// The first invalid byte offset of `text`, or -1 when it is valid UTF-8.
int64_t FirstInvalidUtf8Offset(absl::string_view text);

}  // namespace tandem

#endif  // TANDEM_SERVER_API_VALIDATION_H_

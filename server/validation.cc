#include "server/validation.h"

#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "models/text_stream.h"

namespace tandem {
namespace {

absl::Status Invalid(absl::string_view message) {
  return absl::InvalidArgumentError(message);
}

uint64_t RandomSeed() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  uint64_t s = 0;
  while (s == 0) s = rng();
  return s;
}

}  // namespace

int64_t FirstInvalidUtf8Offset(absl::string_view text) {
  if (IsValidUtf8(text)) return -1;
  // Bisect on prefixes: the first prefix that is invalid by more than a truncated tail.
  for (size_t i = 0; i < text.size();) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > text.size() || !IsValidUtf8(text.substr(i, len))) {
      return static_cast<int64_t>(i);
    }
    i += len;
  }
  return static_cast<int64_t>(text.size());
}

absl::StatusOr<std::unique_ptr<TextRequest>> BuildTextRequest(
    const tandem::v1::GenerateRequest& request, std::shared_ptr<const ModelEntry> model,
    const RequestLimits& limits, absl::Time accepted) {
  const LlamaConfig& cfg = model->dir.llama;
  if (request.has_image()) {
    return Invalid(absl::StrCat("model \"", model->name,
                                "\" is a text model: send text params (image params are for "
                                "image models)"));
  }
  if (static_cast<int>(request.request_id().size()) > limits.max_request_id_bytes) {
    return Invalid(absl::StrCat("request_id is ", request.request_id().size(),
                                " bytes; the limit is ", limits.max_request_id_bytes));
  }
  if (request.priority() < -100 || request.priority() > 100) {
    return Invalid(absl::StrCat("priority ", request.priority(), " is outside [-100, 100]"));
  }
  if (static_cast<int>(request.prompt().size()) > limits.max_prompt_bytes) {
    return Invalid(absl::StrCat("prompt is ", request.prompt().size(), " bytes; the limit is ",
                                limits.max_prompt_bytes));
  }
  if (int64_t bad = FirstInvalidUtf8Offset(request.prompt()); bad >= 0) {
    return Invalid(absl::StrCat("prompt is not valid UTF-8 (first bad byte at offset ", bad,
                                ")"));
  }
  const tandem::v1::TextParams& p = request.text();
  if (std::isnan(p.temperature()) || p.temperature() < 0 || std::isinf(p.temperature())) {
    return Invalid(absl::StrCat("temperature must be a finite number >= 0 (0 is greedy); got ",
                                p.temperature()));
  }
  if (p.has_top_p() && !(p.top_p() > 0.0f && p.top_p() <= 1.0f)) {
    return Invalid(absl::StrCat("top_p must be in (0, 1]; got ", p.top_p()));
  }
  if (p.top_k() < 0) {
    return Invalid(absl::StrCat("top_k must be >= 0 (0 disables it); got ", p.top_k()));
  }
  if (p.stop_size() > limits.max_stop_strings) {
    return Invalid(absl::StrCat(p.stop_size(), " stop strings given; the limit is ",
                                limits.max_stop_strings));
  }
  for (int i = 0; i < p.stop_size(); ++i) {
    const std::string& s = p.stop(i);
    if (s.empty()) return Invalid(absl::StrCat("stop[", i, "] is empty"));
    if (static_cast<int>(s.size()) > limits.max_stop_bytes) {
      return Invalid(absl::StrCat("stop[", i, "] is ", s.size(), " bytes; the limit is ",
                                  limits.max_stop_bytes));
    }
    if (!IsValidUtf8(s)) return Invalid(absl::StrCat("stop[", i, "] is not valid UTF-8"));
  }
  if (p.has_max_tokens() && p.max_tokens() <= 0) {
    return Invalid(absl::StrCat("max_tokens must be >= 1 (leave it unset to fill the context); "
                                "got ",
                                p.max_tokens()));
  }

  auto req = std::make_unique<TextRequest>();
  req->prompt.reserve(request.prompt().size() / 2 + 2);
  req->prompt.push_back(cfg.bos_id);
  for (int32_t id : model->tokenizer->Encode(request.prompt())) req->prompt.push_back(id);
  const int prompt_tokens = static_cast<int>(req->prompt.size());
  if (prompt_tokens >= cfg.seq_len) {
    return Invalid(absl::StrCat("prompt is ", prompt_tokens, " tokens (with BOS) but model \"",
                                model->name, "\" has a context of ", cfg.seq_len,
                                " tokens; shorten it to leave room for the completion"));
  }
  const int room = cfg.seq_len - prompt_tokens;
  if (p.has_max_tokens() && p.max_tokens() > room) {
    return Invalid(absl::StrCat("prompt (", prompt_tokens, " tokens) + max_tokens (",
                                p.max_tokens(), ") exceeds model \"", model->name,
                                "\"'s context of ", cfg.seq_len, " tokens; max_tokens can be at "
                                "most ", room));
  }
  req->max_tokens = p.has_max_tokens() ? p.max_tokens() : room;
  req->id = request.request_id();
  req->sampling.temperature = p.temperature();
  req->sampling.top_k = p.top_k();
  req->sampling.top_p = p.has_top_p() ? p.top_p() : 1.0f;
  req->sampling.seed = p.seed() != 0 ? p.seed() : RandomSeed();
  req->stop.assign(p.stop().begin(), p.stop().end());
  req->include_token_ids = p.include_token_ids();
  req->priority = request.priority();
  req->accepted = accepted;
  req->model = std::move(model);
  return req;
}

}  // namespace tandem

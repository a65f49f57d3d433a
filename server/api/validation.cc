#include "server/api/validation.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "models/text/text_stream.h"

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

// Checks shared by every kind of request.
absl::Status ValidateCommon(const tandem::v1::GenerateRequest& request,
                            const RequestLimits& limits) {
  if (static_cast<int>(request.request_id().size()) > limits.max_request_id_bytes) {
    return Invalid(absl::StrCat("request_id is ", request.request_id().size(),
                                " bytes; the limit is ", limits.max_request_id_bytes));
  }
  if (request.priority() < -100 || request.priority() > 100) {
    return Invalid(absl::StrCat("priority ", request.priority(), " is outside [-100, 100]"));
  }
  if (int64_t bad = FirstInvalidUtf8Offset(request.prompt()); bad >= 0) {
    return Invalid(absl::StrCat("prompt is not valid UTF-8 (first bad byte at offset ", bad,
                                ")"));
  }
  return absl::OkStatus();
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
  if (static_cast<int>(request.prompt().size()) > limits.max_prompt_bytes) {
    return Invalid(absl::StrCat("prompt is ", request.prompt().size(), " bytes; the limit is ",
                                limits.max_prompt_bytes, " (--max_prompt_bytes)"));
  }
  if (absl::Status s = ValidateCommon(request, limits); !s.ok()) return s;
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

namespace {

// The request's sampler (DDIM when unset); eta is DDIM's only.
absl::StatusOr<DiffusionSampler> SamplerOf(const tandem::v1::ImageParams& p) {
  switch (p.sampler()) {
    case tandem::v1::SAMPLER_UNSPECIFIED:
    case tandem::v1::SAMPLER_DDIM:
      return DiffusionSampler::kDdim;
    case tandem::v1::SAMPLER_DDPM:
      if (p.eta() != 0) return Invalid("eta applies to the DDIM sampler only");
      return DiffusionSampler::kDdpm;
    default:
      return Invalid(absl::StrCat("unknown sampler ", static_cast<int>(p.sampler()),
                                  "; use SAMPLER_DDIM or SAMPLER_DDPM"));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ImageRequest>> BuildImageRequest(
    const tandem::v1::GenerateRequest& request, std::shared_ptr<const ModelEntry> model,
    const RequestLimits& limits, absl::Time accepted) {
  const DiffusionConfig& cfg = model->dir.diffusion;
  if (request.has_text()) {
    return Invalid(absl::StrCat("model \"", model->name,
                                "\" is an image model: send image params (text params are for "
                                "text models)"));
  }
  if (static_cast<int>(request.prompt().size()) > limits.max_caption_bytes) {
    return Invalid(absl::StrCat("prompt is ", request.prompt().size(), " bytes; an image model's "
                                "caption may be at most ", limits.max_caption_bytes,
                                " (--max_caption_bytes; the text encoder reads ",
                                cfg.text_seq_len - 1, " tokens of it)"));
  }
  if (absl::Status s = ValidateCommon(request, limits); !s.ok()) return s;
  const tandem::v1::ImageParams& p = request.image();
  const int max_steps = std::min(limits.max_steps, cfg.diffusion_steps);
  if (p.has_steps() && (p.steps() < 1 || p.steps() > max_steps)) {
    return Invalid(absl::StrCat("steps must be in [1, ", max_steps, "] (leave it unset for the "
                                "model's default of ", cfg.default_steps, "); got ", p.steps()));
  }
  const float g = p.guidance_scale();
  if (p.has_guidance_scale() && !(g >= 1 && g <= 100)) {  // NaN fails too
    return Invalid(absl::StrCat("guidance_scale must be in [1, 100] (1 disables guidance; leave it "
                                "unset for the model's default of ",
                                cfg.default_guidance, "); got ", g));
  }
  if (p.has_num_images() && (p.num_images() < 1 || p.num_images() > limits.max_images)) {
    return Invalid(absl::StrCat("num_images must be in [1, ", limits.max_images, "]; got ",
                                p.num_images()));
  }
  if (std::isnan(p.eta()) || p.eta() < 0 || p.eta() > 1) {
    return Invalid(absl::StrCat("eta must be in [0, 1]; got ", p.eta()));
  }
  if (p.preview_every() < 0) {
    return Invalid(absl::StrCat("preview_every must be >= 0; got ", p.preview_every()));
  }
  absl::StatusOr<DiffusionSampler> sampler = SamplerOf(p);
  if (!sampler.ok()) return sampler.status();
  if (static_cast<int>(p.negative_prompt().size()) > limits.max_caption_bytes) {
    return Invalid(absl::StrCat("negative_prompt is ", p.negative_prompt().size(),
                                " bytes; the limit is ", limits.max_caption_bytes,
                                " (--max_caption_bytes)"));
  }
  if (!IsValidUtf8(p.negative_prompt())) return Invalid("negative_prompt is not valid UTF-8");
  auto req = std::make_unique<ImageRequest>();
  // The encoder reads BOS + text_seq_len - 1 ids: the rest is cut here, and reported.
  const size_t room = static_cast<size_t>(std::max(1, cfg.text_seq_len - 1));
  auto encode = [&](const std::string& text, int* truncated) {
    std::vector<int32_t> ids = model->tokenizer->Encode(text);
    *truncated = ids.size() > room ? static_cast<int>(ids.size() - room) : 0;
    if (ids.size() > room) ids.resize(room);
    return ids;
  };
  req->spec.caption = encode(request.prompt(), &req->prompt_tokens_truncated);
  req->spec.negative_caption =
      encode(p.negative_prompt(), &req->negative_prompt_tokens_truncated);
  req->spec.steps = p.has_steps() ? p.steps() : cfg.default_steps;
  req->spec.guidance = p.has_guidance_scale() ? p.guidance_scale() : cfg.default_guidance;
  req->spec.sampler = *sampler;
  req->spec.eta = p.eta();
  req->spec.seed = p.seed() != 0 ? p.seed() : RandomSeed();
  req->num_images = p.has_num_images() ? p.num_images() : 1;
  req->preview_every = p.preview_every();
  // BOS + caption, cut to the encoder's context.
  req->prompt_tokens =
      std::min(static_cast<int>(req->spec.caption.size()) + 1, cfg.text_seq_len);
  req->priority = request.priority();
  req->accepted = accepted;
  req->model = std::move(model);
  return req;
}

}  // namespace tandem

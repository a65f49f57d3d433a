#include "server/api/inference_service.h"

#include <algorithm>
#include <cstdio>
#include <deque>
#include <type_traits>
#include <optional>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "server/api/proto_convert.h"
#include "server/api/reactor_count.h"
#include "server/api/stream_outbox.h"

namespace tandem {

using tandem::v1::GenerateRequest;
using tandem::v1::GenerateResponse;


namespace {

// "OK", "INVALID_ARGUMENT"...: gRPC's and absl's codes share numbers and names.
std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

// `text` with control characters written as \xNN: one log line whatever a caller sent.
std::string OneLine(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      absl::StrAppendFormat(&out, "\\x%02x", u);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// The reactor of one Generate call, and its outbox (a StreamOutbox that coalesces text deltas).
// gRPC owns the reactor until OnDone; the device loop holds the outbox (a shared_ptr) and may
// outlive the reactor: once OnDone ran, Send/Finish are dropped.
class GenerateReactor final : public grpc::ServerWriteReactor<GenerateResponse>,
                              public StreamOutbox<GenerateResponse>::Writer,
                              private CountedReactor {
 public:
  class Outbox final : public ResponseStream, public StreamOutbox<GenerateResponse> {
   public:
    explicit Outbox(GenerateReactor* reactor)
        : StreamOutbox<GenerateResponse>(reactor, &CoalesceText) {}

    // Set before the request is queued. `client` is the call's deadline; `cap` the server's.
    void SetDeadlines(absl::Time client, absl::Time cap, absl::Duration max_request_time) {
      deadline_ = std::min(client, cap);
      capped_ = cap < client;
      max_request_time_ = max_request_time;
    }
    // Caption tokens cut to fit the text encoder (image requests), reported in the usage.
    void SetTruncated(int prompt, int negative_prompt) {
      prompt_truncated_ = prompt;
      negative_truncated_ = negative_prompt;
    }

    void Send(GenerateEvent event) override {
      if (const Finished* f = std::get_if<Finished>(&event)) {
        absl::MutexLock lock(&mu_);
        finished_ = *f;
      }
      GenerateResponse response = ToProto(event);
      if (response.has_finished()) {
        auto* usage = response.mutable_finished()->mutable_usage();
        usage->set_prompt_tokens_truncated(prompt_truncated_);
        usage->set_negative_prompt_tokens_truncated(negative_truncated_);
      }
      StreamOutbox<GenerateResponse>::Send(std::move(response));
    }
    // A request the device stopped because its deadline passed ends DEADLINE_EXCEEDED.
    void Finish(const absl::Status& status) override {
      if (status.code() == absl::StatusCode::kCancelled && !StreamOutbox::cancelled() &&
          absl::Now() >= deadline_) {
        StreamOutbox<GenerateResponse>::Finish(absl::DeadlineExceededError(
            capped_ ? absl::StrCat("the request ran past the server's limit of ",
                                   absl::FormatDuration(max_request_time_),
                                   " (--max_request_seconds)")
                    : std::string("the request's deadline passed")));
        return;
      }
      StreamOutbox<GenerateResponse>::Finish(status);
    }
    // The client went away, or the deadline passed (also before gRPC's own timer fires).
    bool cancelled() const override {
      return StreamOutbox<GenerateResponse>::cancelled() || absl::Now() >= deadline_;
    }
    // The Finished event the device sent, if any (for the request log).
    std::optional<Finished> finished() {
      absl::MutexLock lock(&mu_);
      return finished_;
    }

   private:
    // A client that reads slowly gets fewer, larger text deltas, not a backlog.
    static bool CoalesceText(GenerateResponse& last, GenerateResponse& next) {
      if (!last.has_text() || !next.has_text()) return false;
      auto* t = last.mutable_text();
      t->mutable_text()->append(next.text().text());
      t->mutable_token_ids()->MergeFrom(next.text().token_ids());
      return true;
    }
    absl::Mutex mu_;
    std::optional<Finished> finished_ ABSL_GUARDED_BY(mu_);
    // Written before the request is queued, read by the device loop after.
    absl::Time deadline_ = absl::InfiniteFuture();
    bool capped_ = false;
    absl::Duration max_request_time_;
    int prompt_truncated_ = 0;
    int negative_truncated_ = 0;
  };

  GenerateReactor(Metrics* metrics, bool log, std::string id)
      : outbox_(std::make_shared<Outbox>(this)), metrics_(metrics), log_(log), id_(std::move(id)) {}

  std::shared_ptr<Outbox> outbox() { return outbox_; }
  // What the request log and the request counter say about the call.
  void Describe(std::string model, const char* kind) {
    model_ = std::move(model);
    kind_ = kind;
  }
  void SetClient(std::string client) { client_ = std::move(client); }

  // Ends the call at once (validation failed); nothing was queued.
  void Reject(const absl::Status& status) { outbox_->Finish(status); }

  void OnWriteDone(bool ok) override { outbox_->OnWriteDone(ok); }
  void OnCancel() override { outbox_->OnCancel(); }
  void OnDone() override {
    outbox_->Detach();
    delete this;
  }

  void Write(const GenerateResponse* response) override { StartWrite(response); }
  void Close(grpc::Status status) override {
    if (metrics_) {
      metrics_->requests
          .Add({{"model", model_}, {"kind", kind_}, {"code", CodeName(status.error_code())}})
          .Increment();
    }
    if (log_) LogRequest(status);
    grpc::ServerWriteReactor<GenerateResponse>::Finish(std::move(status));
  }

 private:
  // One line per call: id, model, kind, final status, and the usage when the device finished it.
  void LogRequest(const grpc::Status& status) {
    // What came from the caller is escaped: a newline in it cannot forge a log line.
    std::string line = absl::StrCat("tandemd: request ",
                                    OneLine(absl::string_view(id_).substr(0, 128)),
                                    client_.empty() ? "" : absl::StrCat(" client=", client_),
                                    " model=", OneLine(model_), " ", kind_, " ",
                                    CodeName(status.error_code()));
    if (!status.ok()) absl::StrAppend(&line, ": ", OneLine(status.error_message()));
    if (std::optional<Finished> f = outbox_->finished()) {
      const Usage& u = f->usage;
      absl::StrAppendFormat(&line, " v%d prompt=%d", f->model_version, u.prompt_tokens);
      if (u.images > 0) {
        absl::StrAppendFormat(&line, " images=%d steps=%d", u.images, u.steps);
      } else {
        absl::StrAppendFormat(&line, " completion=%d", u.completion_tokens);
      }
      absl::StrAppendFormat(&line, " queue=%.3fs first=%.3fs total=%.3fs", u.queue_seconds,
                            u.time_to_first_token_seconds, u.total_seconds);
    }
    std::fprintf(stderr, "%s\n", line.c_str());
  }

  std::shared_ptr<Outbox> outbox_;
  Metrics* metrics_;
  const bool log_;
  const std::string id_;
  std::string model_ = "unknown";
  std::string client_;
  const char* kind_ = "text";
};

// The call's deadline as an absl::Time (InfiniteFuture when it has none).
absl::Time ClientDeadline(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(deadline);
}

}  // namespace

InferenceService::InferenceService(ModelRegistry* registry, WorkerPool* pool, Metrics* metrics,
                                   const Authenticator* auth, InferenceOptions options)
    : registry_(registry), pool_(pool), metrics_(metrics), auth_(auth),
      options_(std::move(options)) {}

grpc::ServerWriteReactor<GenerateResponse>* InferenceService::Generate(
    grpc::CallbackServerContext* context, const GenerateRequest* request) {
  const absl::Time accepted = absl::Now();
  const std::string id = request->request_id().empty()
                             ? absl::StrCat("gen-", next_id_.fetch_add(1))
                             : request->request_id();
  auto* reactor = new GenerateReactor(metrics_, options_.log_requests, id);
  absl::StatusOr<Caller> caller = auth_->Authorize(*context, Scope::kInference, "Generate");
  if (!caller.ok()) {
    reactor->Reject(caller.status());
    return reactor;
  }
  reactor->SetClient(caller->name);
  reactor->outbox()->SetDeadlines(ClientDeadline(*context), accepted + options_.max_request_time,
                                  options_.max_request_time);
  // Without a model name the params pick the default model of their kind.
  absl::StatusOr<std::shared_ptr<const ModelEntry>> model = registry_->Lookup(
      request->model(), request->has_image() ? ModelKind::kImage : ModelKind::kText);
  const bool image = model.ok() ? (*model)->dir.kind == ModelKind::kImage : request->has_image();
  reactor->Describe(model.ok() ? (*model)->name : std::string("unknown"),
                    image ? "image" : "text");
  if (!model.ok()) {
    CountRejected("unknown", model.status());
    reactor->Reject(model.status());
    return reactor;
  }
  absl::Status submitted =
      image ? Submit(BuildImageRequest(*request, *model, options_.limits, accepted),
                     (*model)->name, id, reactor)
            : Submit(BuildTextRequest(*request, *model, options_.limits, accepted),
                     (*model)->name, id, reactor);

  if (!submitted.ok()) {
    // A full queue says when to come back: trailing metadata "retry-after-ms".
    if (auto ms = submitted.GetPayload(kRetryAfterMsPayload)) {
      context->AddTrailingMetadata("retry-after-ms", std::string(*ms));
    }
    reactor->Reject(submitted);
  }
  return reactor;
}

template <typename Request>
absl::Status InferenceService::Submit(absl::StatusOr<std::unique_ptr<Request>> built,
                                      const std::string& model, const std::string& id,
                                      void* reactor) {
  if (!built.ok()) {
    // The pool counts its own refusals; these are the validation's.
    CountRejected(model, built.status());
    return built.status();
  }
  std::unique_ptr<Request> req = *std::move(built);
  req->id = id;
  auto outbox = static_cast<GenerateReactor*>(reactor)->outbox();
  if constexpr (std::is_same_v<Request, ImageRequest>) {
    outbox->SetTruncated(req->prompt_tokens_truncated, req->negative_prompt_tokens_truncated);
  }
  req->stream = std::move(outbox);
  return pool_->Submit(req);
}

void InferenceService::CountRejected(const std::string& model, const absl::Status& status) {
  if (!metrics_) return;
  const std::string reason = absl::AsciiStrToLower(absl::StatusCodeToString(status.code()));
  metrics_->requests_rejected.Add({{"model", model}, {"reason", reason}}).Increment();
}

grpc::ServerUnaryReactor* InferenceService::ListModels(
    grpc::CallbackServerContext* context, const tandem::v1::ListModelsRequest* /*request*/,
    tandem::v1::ListModelsResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (absl::StatusOr<Caller> caller = auth_->Authorize(*context, Scope::kInference, "ListModels");
      !caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  const std::string default_model = registry_->default_model();
  const std::string default_image = registry_->default_image_model();
  const std::vector<std::string> devices = pool_->devices();
  for (const auto& entry : registry_->List()) {
    auto* m = response->add_models();
    m->set_name(entry->name);
    const bool text = entry->dir.kind == ModelKind::kText;
    m->set_kind(text ? tandem::v1::MODEL_KIND_TEXT : tandem::v1::MODEL_KIND_IMAGE);
    m->set_is_default(entry->name == (text ? default_model : default_image));
    m->set_parameters(entry->parameters);
    if (text) {
      m->set_context_length(entry->dir.llama.seq_len);
      m->set_vocab_size(entry->dir.llama.vocab_size);
    } else {
      m->set_image_size(entry->dir.diffusion.image_size);
      m->set_vocab_size(entry->dir.diffusion.vocab_size);
    }
    m->set_version(entry->version);
    m->set_source(entry->dir.provenance.source.empty() ? entry->dir.path
                                                       : entry->dir.provenance.source);
    m->set_train_job_id(entry->dir.provenance.train_job_id);
    m->set_train_step(entry->dir.provenance.train_step);
    for (const auto& d : devices) m->add_devices(d);
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace tandem


#include "server/api/inference_service.h"

#include <cstdio>
#include <deque>
#include <optional>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "server/api/proto_convert.h"
#include "server/api/stream_outbox.h"

namespace tandem {

using tandem::v1::GenerateRequest;
using tandem::v1::GenerateResponse;


namespace {

// "OK", "INVALID_ARGUMENT"...: gRPC's and absl's codes share numbers and names.
std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

// The reactor of one Generate call, and its outbox (a StreamOutbox that coalesces text deltas).
// gRPC owns the reactor until OnDone; the device loop holds the outbox (a shared_ptr) and may
// outlive the reactor: once OnDone ran, Send/Finish are dropped.
class GenerateReactor final : public grpc::ServerWriteReactor<GenerateResponse>,
                              public StreamOutbox<GenerateResponse>::Writer {
 public:
  class Outbox final : public ResponseStream, public StreamOutbox<GenerateResponse> {
   public:
    explicit Outbox(GenerateReactor* reactor)
        : StreamOutbox<GenerateResponse>(reactor, &CoalesceText) {}
    void Send(GenerateEvent event) override {
      if (const Finished* f = std::get_if<Finished>(&event)) {
        absl::MutexLock lock(&mu_);
        finished_ = *f;
      }
      StreamOutbox<GenerateResponse>::Send(ToProto(event));
    }
    void Finish(const absl::Status& status) override {
      StreamOutbox<GenerateResponse>::Finish(status);
    }
    bool cancelled() const override { return StreamOutbox<GenerateResponse>::cancelled(); }
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
  };

  GenerateReactor(Metrics* metrics, bool log, std::string id)
      : outbox_(std::make_shared<Outbox>(this)), metrics_(metrics), log_(log), id_(std::move(id)) {}

  std::shared_ptr<Outbox> outbox() { return outbox_; }
  // What the request log and the request counter say about the call.
  void Describe(std::string model, const char* kind) {
    model_ = std::move(model);
    kind_ = kind;
  }

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
    std::string line = absl::StrCat("tandemd: request ", id_, " model=", model_, " ", kind_, " ",
                                    CodeName(status.error_code()));
    if (!status.ok()) absl::StrAppend(&line, ": ", status.error_message());
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
  const char* kind_ = "text";
};

}  // namespace

InferenceService::InferenceService(ModelRegistry* registry, WorkerPool* pool, Metrics* metrics,
                                   RequestLimits limits, bool log_requests)
    : registry_(registry), pool_(pool), metrics_(metrics), limits_(limits),
      log_requests_(log_requests) {}

grpc::ServerWriteReactor<GenerateResponse>* InferenceService::Generate(
    grpc::CallbackServerContext* context, const GenerateRequest* request) {
  const absl::Time accepted = absl::Now();
  const std::string id = request->request_id().empty()
                             ? absl::StrCat("gen-", next_id_.fetch_add(1))
                             : request->request_id();
  auto* reactor = new GenerateReactor(metrics_, log_requests_, id);
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
      image ? Submit(BuildImageRequest(*request, *model, limits_, accepted), (*model)->name, id,
                     reactor)
            : Submit(BuildTextRequest(*request, *model, limits_, accepted), (*model)->name, id,
                     reactor);

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
  req->stream = static_cast<GenerateReactor*>(reactor)->outbox();
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
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace tandem


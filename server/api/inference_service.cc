#include "server/api/inference_service.h"

#include <deque>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/api/stream_outbox.h"

namespace tandem {

using tandem::v1::GenerateRequest;
using tandem::v1::GenerateResponse;


namespace {

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
    void Send(GenerateResponse response) override {
      StreamOutbox<GenerateResponse>::Send(std::move(response));
    }
    void Finish(const absl::Status& status) override {
      StreamOutbox<GenerateResponse>::Finish(status);
    }
    bool cancelled() const override { return StreamOutbox<GenerateResponse>::cancelled(); }

   private:
    // A client that reads slowly gets fewer, larger text deltas, not a backlog.
    static bool CoalesceText(GenerateResponse& last, GenerateResponse& next) {
      if (!last.has_text() || !next.has_text()) return false;
      auto* t = last.mutable_text();
      t->mutable_text()->append(next.text().text());
      t->mutable_token_ids()->MergeFrom(next.text().token_ids());
      return true;
    }
  };

  GenerateReactor(Metrics* metrics, std::string model, const char* kind)
      : outbox_(std::make_shared<Outbox>(this)), metrics_(metrics), model_(std::move(model)),
        kind_(kind) {}

  std::shared_ptr<Outbox> outbox() { return outbox_; }

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
      static const char* kCodeNames[] = {
          "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
          "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
          "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
          "UNAUTHENTICATED"};
      int code = static_cast<int>(status.error_code());
      metrics_->requests
          .Add({{"model", model_}, {"kind", kind_},
                {"code", code >= 0 && code <= 16 ? kCodeNames[code] : "UNKNOWN"}})
          .Increment();
    }
    grpc::ServerWriteReactor<GenerateResponse>::Finish(std::move(status));
  }

 private:
  std::shared_ptr<Outbox> outbox_;
  Metrics* metrics_;
  std::string model_;
  const char* kind_;
};

}  // namespace

InferenceService::InferenceService(ModelRegistry* registry, WorkerPool* pool, Metrics* metrics,
                                   RequestLimits limits)
    : registry_(registry), pool_(pool), metrics_(metrics), limits_(limits) {}

grpc::ServerWriteReactor<GenerateResponse>* InferenceService::Generate(
    grpc::CallbackServerContext* context, const GenerateRequest* request) {
  const absl::Time accepted = absl::Now();
  // Without a model name the params pick the default model of their kind.
  absl::StatusOr<std::shared_ptr<const ModelEntry>> model = registry_->Lookup(
      request->model(), request->has_image() ? ModelKind::kImage : ModelKind::kText);
  const bool image = model.ok() ? (*model)->dir.kind == ModelKind::kImage : request->has_image();
  auto* reactor = new GenerateReactor(
      metrics_, model.ok() ? (*model)->name : std::string("unknown"), image ? "image" : "text");
  if (!model.ok()) {
    reactor->Reject(model.status());
    return reactor;
  }
  const std::string id = request->request_id().empty()
                             ? absl::StrCat("gen-", next_id_.fetch_add(1))
                             : request->request_id();
  absl::Status submitted;
  if (image) {
    absl::StatusOr<std::unique_ptr<ImageRequest>> built =
        BuildImageRequest(*request, *model, limits_, accepted);
    if (!built.ok()) {
      reactor->Reject(built.status());
      return reactor;
    }
    std::unique_ptr<ImageRequest> req = *std::move(built);
    req->id = id;
    req->stream = reactor->outbox();
    submitted = pool_->Submit(req);
  } else {
    absl::StatusOr<std::unique_ptr<TextRequest>> built =
        BuildTextRequest(*request, *model, limits_, accepted);
    if (!built.ok()) {
      reactor->Reject(built.status());
      return reactor;
    }
    std::unique_ptr<TextRequest> req = *std::move(built);
    req->id = id;
    req->stream = reactor->outbox();
    submitted = pool_->Submit(req);
  }
  if (!submitted.ok()) reactor->Reject(submitted);
  (void)context;
  return reactor;
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


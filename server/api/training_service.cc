#include "server/api/training_service.h"

#include <functional>
#include <memory>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "server/api/proto_convert.h"
#include "server/api/reactor_count.h"
#include "server/api/stream_outbox.h"

namespace tandem {
namespace {

using tandem::v1::TrainJob;
using tandem::v1::TrainJobEvent;

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context,
                                 const absl::StatusOr<Job>& job, TrainJob* response) {
  if (job.ok()) *response = ToProto(*job);
  auto* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(job.status()));
  return reactor;
}

// Job ids are "job-" and digits; anything else (a path, a very long string) is refused before
// it reaches the store.
absl::Status CheckJobId(const std::string& id) {
  bool ok = !id.empty() && id.size() <= 64;
  for (char c : id) ok = ok && (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-');
  if (!ok) {
    return absl::InvalidArgumentError(
        "id must be a job id such as job-000001 (ListTrainJobs shows them)");
  }
  return absl::OkStatus();
}

// The reactor of one WatchTrainJob call; the manager holds its outbox until the job ends or the
// call does.
class WatchReactor final : public grpc::ServerWriteReactor<TrainJobEvent>,
                           public StreamOutbox<TrainJobEvent>::Writer,
                           private CountedReactor {
 public:
  class Outbox final : public EventSink<JobEvent>, public StreamOutbox<TrainJobEvent> {
   public:
    explicit Outbox(WatchReactor* reactor) : StreamOutbox<TrainJobEvent>(reactor) {}
    void Send(JobEvent event) override { StreamOutbox::Send(ToProto(event)); }
    void Finish(const absl::Status& status) override { StreamOutbox::Finish(status); }
    bool cancelled() const override { return StreamOutbox::cancelled(); }
  };

  WatchReactor() : outbox_(std::make_shared<Outbox>(this)) {}
  std::shared_ptr<Outbox> outbox() { return outbox_; }

  void Write(const TrainJobEvent* event) override { StartWrite(event); }
  void Close(grpc::Status status) override { Finish(std::move(status)); }
  void OnWriteDone(bool ok) override { outbox_->OnWriteDone(ok); }
  void OnCancel() override { outbox_->OnCancel(); }
  void OnDone() override {
    outbox_->Detach();
    delete this;
  }

 private:
  std::shared_ptr<Outbox> outbox_;
};

}  // namespace

absl::StatusOr<Caller> TrainingService::Authorize(const grpc::CallbackServerContext& context,
                                                  absl::string_view method) const {
  absl::StatusOr<Caller> caller = auth_->Authorize(context, Scope::kTrain, method);
  if (caller.ok() && manager_ == nullptr) return off_;
  return caller;
}

absl::StatusOr<Job> TrainingService::OwnJob(const Caller& caller, const std::string& id) const {
  if (absl::Status s = CheckJobId(id); !s.ok()) return s;
  absl::StatusOr<Job> job = manager_->Get(id, /*include_history=*/false);
  if (!job.ok()) return job.status();
  if (!caller.admin() && job->spec.owner != caller.name) {
    return absl::PermissionDeniedError(absl::StrCat(
        id, " belongs to another client; client \"", caller.name,
        "\" sees only its own jobs (the admin scope sees all)"));
  }
  return job;
}

grpc::ServerUnaryReactor* TrainingService::SubmitTrainJob(
    grpc::CallbackServerContext* context, const tandem::v1::SubmitTrainJobRequest* request,
    TrainJob* response) {
  absl::StatusOr<Caller> caller = Authorize(*context, "SubmitTrainJob");
  if (!caller.ok()) return Answer(context, caller.status(), response);
  JobSpec spec = FromProto(request->spec());
  if ((!spec.deploy_as.empty() || spec.deploy_on_improvement) && !caller->admin()) {
    return Answer(context,
                  absl::PermissionDeniedError(absl::StrCat(
                      "deploy_as publishes a model every client is served: client \"",
                      caller->name, "\" needs the admin scope for it (submit without deploy_as "
                                    "to train only)")),
                  response);
  }
  spec.owner = caller->name;
  return Answer(context, manager_->Submit(std::move(spec)), response);
}

grpc::ServerUnaryReactor* TrainingService::OnOwnJob(
    grpc::CallbackServerContext* context, absl::string_view method, const std::string& id,
    TrainJob* response, const std::function<absl::StatusOr<Job>(const std::string&)>& act) {
  absl::StatusOr<Caller> caller = Authorize(*context, method);
  if (!caller.ok()) return Answer(context, caller.status(), response);
  if (absl::StatusOr<Job> own = OwnJob(*caller, id); !own.ok()) {
    return Answer(context, own.status(), response);
  }
  return Answer(context, act(id), response);
}

grpc::ServerUnaryReactor* TrainingService::GetTrainJob(
    grpc::CallbackServerContext* context, const tandem::v1::GetTrainJobRequest* request,
    TrainJob* response) {
  return OnOwnJob(context, "GetTrainJob", request->id(), response, [&](const std::string& id) {
    return manager_->Get(id, request->include_history());
  });
}

grpc::ServerUnaryReactor* TrainingService::ListTrainJobs(
    grpc::CallbackServerContext* context, const tandem::v1::ListTrainJobsRequest* request,
    tandem::v1::ListTrainJobsResponse* response) {
  auto* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = Authorize(*context, "ListTrainJobs");
  if (!caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  std::vector<JobState> states;
  for (int s : request->states()) {
    if (std::optional<JobState> state = FromProto(static_cast<tandem::v1::TrainJobState>(s))) {
      states.push_back(*state);
    }
  }
  // Only states no job can be in: nothing matches.
  if (states.empty() && request->states_size() > 0) {
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  absl::StatusOr<std::vector<Job>> jobs = manager_->List(states);
  if (jobs.ok()) {
    for (const Job& job : *jobs) {
      if (caller->admin() || job.spec.owner == caller->name) *response->add_jobs() = ToProto(job);
    }
  }
  reactor->Finish(ToGrpcStatus(jobs.status()));
  return reactor;
}

grpc::ServerWriteReactor<TrainJobEvent>* TrainingService::WatchTrainJob(
    grpc::CallbackServerContext* context, const tandem::v1::WatchTrainJobRequest* request) {
  auto* reactor = new WatchReactor();
  absl::StatusOr<Caller> caller = Authorize(*context, "WatchTrainJob");
  absl::Status s = caller.status();
  if (s.ok()) s = OwnJob(*caller, request->id()).status();
  if (s.ok()) s = manager_->Watch(request->id(), request->replay(), reactor->outbox());
  if (!s.ok()) reactor->outbox()->Finish(s);
  return reactor;
}

grpc::ServerUnaryReactor* TrainingService::CancelTrainJob(
    grpc::CallbackServerContext* context, const tandem::v1::CancelTrainJobRequest* request,
    TrainJob* response) {
  return OnOwnJob(context, "CancelTrainJob", request->id(), response,
                  [this](const std::string& id) { return manager_->Cancel(id); });
}

grpc::ServerUnaryReactor* TrainingService::PauseTrainJob(
    grpc::CallbackServerContext* context, const tandem::v1::PauseTrainJobRequest* request,
    TrainJob* response) {
  return OnOwnJob(context, "PauseTrainJob", request->id(), response,
                  [this](const std::string& id) { return manager_->Pause(id); });
}

grpc::ServerUnaryReactor* TrainingService::ResumeTrainJob(
    grpc::CallbackServerContext* context, const tandem::v1::ResumeTrainJobRequest* request,
    TrainJob* response) {
  return OnOwnJob(context, "ResumeTrainJob", request->id(), response,
                  [this](const std::string& id) { return manager_->Resume(id); });
}

}  // namespace tandem

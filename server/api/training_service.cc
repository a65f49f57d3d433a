#include "server/api/training_service.h"

#include <memory>
#include <utility>

#include "server/api/proto_convert.h"
#include "server/api/stream_outbox.h"

namespace tandem {
namespace {

using tandem::v1::TrainJob;
using tandem::v1::TrainJobEvent;

const absl::Status& NoStateDir() {
  static const absl::Status* s = new absl::Status(absl::FailedPreconditionError(
      "training is disabled: start tandemd with --state_dir (and --data_dir for datasets)"));
  return *s;
}

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context,
                                 const absl::StatusOr<Job>& job, TrainJob* response) {
  if (job.ok()) *response = ToProto(*job);
  auto* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(job.status()));
  return reactor;
}

// The reactor of one WatchTrainJob call; the manager holds its outbox until the job ends or the
// call does.
class WatchReactor final : public grpc::ServerWriteReactor<TrainJobEvent>,
                           public StreamOutbox<TrainJobEvent>::Writer {
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

grpc::ServerUnaryReactor* TrainingService::SubmitTrainJob(
    grpc::CallbackServerContext* context, const tandem::v1::SubmitTrainJobRequest* request,
    TrainJob* response) {
  if (!manager_) return Answer(context, NoStateDir(), response);
  return Answer(context, manager_->Submit(FromProto(request->spec())), response);
}

grpc::ServerUnaryReactor* TrainingService::GetTrainJob(
    grpc::CallbackServerContext* context, const tandem::v1::GetTrainJobRequest* request,
    TrainJob* response) {
  if (!manager_) return Answer(context, NoStateDir(), response);
  return Answer(context, manager_->Get(request->id(), request->include_history()), response);
}

grpc::ServerUnaryReactor* TrainingService::ListTrainJobs(
    grpc::CallbackServerContext* context, const tandem::v1::ListTrainJobsRequest* request,
    tandem::v1::ListTrainJobsResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (!manager_) {
    reactor->Finish(ToGrpcStatus(NoStateDir()));
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
    for (const Job& job : *jobs) *response->add_jobs() = ToProto(job);
  }
  reactor->Finish(ToGrpcStatus(jobs.status()));
  return reactor;
}

grpc::ServerWriteReactor<TrainJobEvent>* TrainingService::WatchTrainJob(
    grpc::CallbackServerContext* /*context*/, const tandem::v1::WatchTrainJobRequest* request) {
  auto* reactor = new WatchReactor();
  absl::Status s = manager_ ? manager_->Watch(request->id(), request->replay(), reactor->outbox()) : NoStateDir();
  if (!s.ok()) reactor->outbox()->Finish(s);
  return reactor;
}

grpc::ServerUnaryReactor* TrainingService::CancelTrainJob(
    grpc::CallbackServerContext* context, const tandem::v1::CancelTrainJobRequest* request,
    TrainJob* response) {
  if (!manager_) return Answer(context, NoStateDir(), response);
  return Answer(context, manager_->Cancel(request->id()), response);
}

grpc::ServerUnaryReactor* TrainingService::PauseTrainJob(
    grpc::CallbackServerContext* context, const tandem::v1::PauseTrainJobRequest* request,
    TrainJob* response) {
  if (!manager_) return Answer(context, NoStateDir(), response);
  return Answer(context, manager_->Pause(request->id()), response);
}

grpc::ServerUnaryReactor* TrainingService::ResumeTrainJob(
    grpc::CallbackServerContext* context, const tandem::v1::ResumeTrainJobRequest* request,
    TrainJob* response) {
  if (!manager_) return Answer(context, NoStateDir(), response);
  return Answer(context, manager_->Resume(request->id()), response);
}

}  // namespace tandem

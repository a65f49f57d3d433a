// TrainingService: the tandem.v1.Training gRPC front end, a thin adapter over TrainManager
// (callback API). Unary methods answer from the manager (spec validation, a SQLite write);
// WatchTrainJob registers a per-call outbox that the manager fills with the job's events, one
// write in flight. Without training (no --state_dir, or a job store that did not open) every
// method answers FAILED_PRECONDITION saying why.
//
// Who (auth.h): every method needs the train scope. A job records the client that submitted it
// (TrainJob.owner); a client without the admin scope lists only its own jobs, and Get, Watch,
// Cancel, Pause and Resume of another client's job answer PERMISSION_DENIED. Publishing a model
// (deploy_as) changes what every client is served: it needs the admin scope.
#ifndef TANDEM_SERVER_API_TRAINING_SERVICE_H_
#define TANDEM_SERVER_API_TRAINING_SERVICE_H_

#include <functional>
#include <string>

#include "server/api/auth.h"
#include "server/jobs/train_manager.h"
#include "tandem/v1/training.grpc.pb.h"

namespace tandem {

class TrainingService final : public tandem::v1::Training::CallbackService {
 public:
  // `manager` may be null: training is off, and every method answers `off` (FAILED_PRECONDITION
  // saying why). It and `auth` must outlive the service.
  TrainingService(TrainManager* manager, const Authenticator* auth, absl::Status off)
      : manager_(manager), auth_(auth), off_(std::move(off)) {}

  grpc::ServerUnaryReactor* SubmitTrainJob(grpc::CallbackServerContext* context,
                                           const tandem::v1::SubmitTrainJobRequest* request,
                                           tandem::v1::TrainJob* response) override;
  grpc::ServerUnaryReactor* GetTrainJob(grpc::CallbackServerContext* context,
                                        const tandem::v1::GetTrainJobRequest* request,
                                        tandem::v1::TrainJob* response) override;
  grpc::ServerUnaryReactor* ListTrainJobs(grpc::CallbackServerContext* context,
                                          const tandem::v1::ListTrainJobsRequest* request,
                                          tandem::v1::ListTrainJobsResponse* response) override;
  grpc::ServerWriteReactor<tandem::v1::TrainJobEvent>* WatchTrainJob(
      grpc::CallbackServerContext* context,
      const tandem::v1::WatchTrainJobRequest* request) override;
  grpc::ServerUnaryReactor* CancelTrainJob(grpc::CallbackServerContext* context,
                                           const tandem::v1::CancelTrainJobRequest* request,
                                           tandem::v1::TrainJob* response) override;
  grpc::ServerUnaryReactor* PauseTrainJob(grpc::CallbackServerContext* context,
                                          const tandem::v1::PauseTrainJobRequest* request,
                                          tandem::v1::TrainJob* response) override;
  grpc::ServerUnaryReactor* ResumeTrainJob(grpc::CallbackServerContext* context,
                                           const tandem::v1::ResumeTrainJobRequest* request,
                                           tandem::v1::TrainJob* response) override;

 private:
  // The caller, if it may use the train scope and the server trains (FAILED_PRECONDITION
  // without --state_dir).
  absl::StatusOr<Caller> Authorize(const grpc::CallbackServerContext& context,
                                   absl::string_view method) const;
  // The job `id` when `caller` may see and control it: INVALID_ARGUMENT for an id that is not
  // one, NOT_FOUND, PERMISSION_DENIED for another client's job.
  absl::StatusOr<Job> OwnJob(const Caller& caller, const std::string& id) const;
  // Answers `method` on job `id` with act(id) once the caller may (Authorize, OwnJob).
  grpc::ServerUnaryReactor* OnOwnJob(
      grpc::CallbackServerContext* context, absl::string_view method, const std::string& id,
      tandem::v1::TrainJob* response,
      const std::function<absl::StatusOr<Job>(const std::string&)>& act);

  TrainManager* const manager_;
  const Authenticator* const auth_;
  const absl::Status off_;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_API_TRAINING_SERVICE_H_

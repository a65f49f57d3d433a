// TrainingService: the tandem.v1.Training gRPC front end, a thin adapter over TrainManager
// (callback API). Unary methods answer from the manager (spec validation, a SQLite write);
// WatchTrainJob registers a per-call outbox that the manager fills with the job's events, one
// write in flight. Without --state_dir every method answers FAILED_PRECONDITION.
#ifndef TANDEM_SERVER_API_TRAINING_SERVICE_H_
#define TANDEM_SERVER_API_TRAINING_SERVICE_H_

#include "server/jobs/train_manager.h"
#include "tandem/v1/training.grpc.pb.h"

namespace tandem {

class TrainingService final : public tandem::v1::Training::CallbackService {
 public:
  // `manager` may be null (no --state_dir); it must outlive the service otherwise.
  explicit TrainingService(TrainManager* manager) : manager_(manager) {}

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
  TrainManager* const manager_;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_API_TRAINING_SERVICE_H_

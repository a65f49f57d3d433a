// Conversions between the core's and the job layer's plain values and the tandem.v1 messages:
// the only place both sides meet. Pure functions; thread-safe.
#ifndef TANDEM_SERVER_API_PROTO_CONVERT_H_
#define TANDEM_SERVER_API_PROTO_CONVERT_H_

#include "server/core/request.h"
#include "server/jobs/job.h"
#include "tandem/v1/inference.pb.h"
#include "tandem/v1/training.pb.h"

namespace tandem {

tandem::v1::GenerateResponse ToProto(const GenerateEvent& event);

// Every field is copied; proto3's zero ("unset") stays zero, for ResolveTrainSpec to default.
JobSpec FromProto(const tandem::v1::TrainJobSpec& spec);
tandem::v1::TrainJobSpec ToProto(const JobSpec& spec);
tandem::v1::TrainJob ToProto(const Job& job);
tandem::v1::TrainJobEvent ToProto(const JobEvent& event);
tandem::v1::TrainMetrics ToProto(const StepRecord& m);
tandem::v1::EvalResult ToProto(const EvalRecord& e);
// TRAIN_JOB_STATE_UNSPECIFIED and unknown numbers: none.
std::optional<JobState> FromProto(tandem::v1::TrainJobState state);

}  // namespace tandem

#endif  // TANDEM_SERVER_API_PROTO_CONVERT_H_

// The JSON form of the job layer's records (server/jobs/job.h), as the job store keeps them:
// readable with the sqlite3 shell, tolerant of fields a newer build adds (unknown keys are
// ignored, missing ones take their defaults). Times are integer nanoseconds since the Unix
// epoch, absent when not yet set; PNG bytes are base64. Torch- and proto-free.
#ifndef TANDEM_SERVER_JOBS_JOB_JSON_H_
#define TANDEM_SERVER_JOBS_JOB_JSON_H_

#include <string>

#include "absl/status/statusor.h"
#include "server/jobs/job.h"

namespace tandem {

std::string JobSpecToJson(const JobSpec& spec);
// The job without `spec` and `history` when `row` (the store keeps those apart), else whole.
std::string JobToJson(const Job& job, bool row = false);
std::string StepRecordToJson(const StepRecord& m);
std::string JobEventToJson(const JobEvent& e);

// DATA_LOSS naming `what` when the text is not the expected JSON.
absl::StatusOr<JobSpec> JobSpecFromJson(const std::string& json);
absl::StatusOr<Job> JobFromJson(const std::string& json);
absl::StatusOr<StepRecord> StepRecordFromJson(const std::string& json);
absl::StatusOr<JobEvent> JobEventFromJson(const std::string& json);

}  // namespace tandem

#endif  // TANDEM_SERVER_JOBS_JOB_JSON_H_

// InferenceService: the tandem.v1.Inference gRPC front end. A thin adapter (gRPC callback API):
// each call is authorized first (auth.h: the inference scope), then each Generate validates the
// request, tokenizes the prompt, and hands a TextRequest or ImageRequest with a per-RPC outbox
// to the worker pool; it never blocks and never touches a model. With log_requests it logs one
// line per call (id, client, model, status, usage). The device loop fills the outbox; the
// reactor drains it with one write in flight.
//
// Time: a call's deadline — the client's, or max_request_time after it was accepted, whichever
// comes first — is the device's to check too: a request whose deadline has passed while it
// waited is dropped before it reaches the device, and one that runs past the server's cap ends
// DEADLINE_EXCEEDED at the next step.
#ifndef TANDEM_SERVER_API_INFERENCE_SERVICE_H_
#define TANDEM_SERVER_API_INFERENCE_SERVICE_H_

#include <atomic>
#include <cstdint>

#include "server/api/auth.h"
#include "server/metrics/metrics.h"
#include "server/core/model_registry.h"
#include "server/core/request.h"
#include "server/api/stream_outbox.h"
#include "server/api/validation.h"
#include "server/core/worker_pool.h"
#include "tandem/v1/inference.grpc.pb.h"

namespace tandem {

struct InferenceOptions {
  RequestLimits limits;
  bool log_requests = true;
  absl::Duration max_request_time = absl::Minutes(10);  // the server's deadline cap
};

class InferenceService final : public tandem::v1::Inference::CallbackService {
 public:
  // Does not own its arguments; they must outlive the service. metrics may be null.
  InferenceService(ModelRegistry* registry, WorkerPool* pool, Metrics* metrics,
                   const Authenticator* auth, InferenceOptions options);

  grpc::ServerWriteReactor<tandem::v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const tandem::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const tandem::v1::ListModelsRequest* request,
                                       tandem::v1::ListModelsResponse* response) override;

 private:
  // Takes a validated request (or its validation error) for `model` to the pool, with `id` and
  // the outbox of `reactor` (a GenerateReactor).
  template <typename Request>
  absl::Status Submit(absl::StatusOr<std::unique_ptr<Request>> built, const std::string& model,
                      const std::string& id, void* reactor);
  // tandem_requests_rejected_total{model, reason: the code's name in lower case}.
  void CountRejected(const std::string& model, const absl::Status& status);

  ModelRegistry* registry_;
  WorkerPool* pool_;
  Metrics* metrics_;
  const Authenticator* auth_;
  const InferenceOptions options_;
  std::atomic<uint64_t> next_id_{1};
};

}  // namespace tandem

#endif  // TANDEM_SERVER_API_INFERENCE_SERVICE_H_

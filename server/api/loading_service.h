// LoadingService: what tandemd's gRPC port answers while the models load, before the real
// services exist: every call (other than the health service, registered beside it, which says
// NOT_SERVING) ends at once with UNAVAILABLE and a message, so clients and load balancers retry
// instead of seeing UNIMPLEMENTED or a refused connection. Thread-safe.
#ifndef TANDEM_SERVER_API_LOADING_SERVICE_H_
#define TANDEM_SERVER_API_LOADING_SERVICE_H_

#include <grpcpp/generic/async_generic_service.h>

namespace tandem {

class LoadingService final : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_API_LOADING_SERVICE_H_

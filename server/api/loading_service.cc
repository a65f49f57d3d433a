#include "server/api/loading_service.h"

namespace tandem {
namespace {

class Refuse final : public grpc::ServerGenericBidiReactor {
 public:
  Refuse() {
    Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "tandemd is loading its models; retry shortly"));
  }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerGenericBidiReactor* LoadingService::CreateReactor(
    grpc::GenericCallbackServerContext* /*context*/) {
  return new Refuse();
}

}  // namespace tandem

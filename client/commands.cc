#include "client/commands.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <memory>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tandem/v1/inference.grpc.pb.h"

namespace tandem::client {
namespace {

const char* CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
      "UNAUTHENTICATED"};
  int c = static_cast<int>(code);
  return c >= 0 && c <= 16 ? kNames[c] : "UNKNOWN";
}

// One line on stderr; UNAVAILABLE before any answer means the server is not there.
int ReportError(const ConnectOptions& connect, const grpc::Status& status) {
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    std::fprintf(stderr, "tandem: cannot reach the server at %s (UNAVAILABLE: %s)\n",
                 connect.server.c_str(), status.error_message().c_str());
    return 3;
  }
  std::fprintf(stderr, "tandem: %s: %s\n", CodeName(status.error_code()),
               status.error_message().c_str());
  return 1;
}

std::unique_ptr<tandem::v1::Inference::Stub> Connect(const ConnectOptions& connect) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);  // images can be large
  auto channel =
      grpc::CreateCustomChannel(connect.server, grpc::InsecureChannelCredentials(), args);
  return tandem::v1::Inference::NewStub(channel);
}

void SetDeadline(const ConnectOptions& connect, grpc::ClientContext* ctx) {
  if (connect.timeout_seconds > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(
                          static_cast<int64_t>(connect.timeout_seconds * 1000)));
  }
}

const char* ReasonName(tandem::v1::Finished::Reason r) {
  switch (r) {
    case tandem::v1::Finished::LENGTH: return "length";
    case tandem::v1::Finished::STOP: return "stop";
    case tandem::v1::Finished::EOS: return "eos";
    case tandem::v1::Finished::CANCELLED: return "cancelled";
    case tandem::v1::Finished::COMPLETE: return "complete";
    default: return "unknown";
  }
}

}  // namespace

int Generate(const ConnectOptions& connect, const GenerateOptions& options) {
  auto stub = Connect(connect);
  tandem::v1::GenerateRequest req;
  req.set_model(options.model);
  req.set_prompt(options.prompt);
  auto* text = req.mutable_text();
  if (options.max_tokens) text->set_max_tokens(*options.max_tokens);
  text->set_temperature(options.temperature);
  text->set_top_k(options.top_k);
  if (options.top_p) text->set_top_p(*options.top_p);
  text->set_seed(options.seed);
  for (const auto& s : options.stop) text->add_stop(s);

  grpc::ClientContext ctx;
  SetDeadline(connect, &ctx);
  auto reader = stub->Generate(&ctx, req);
  tandem::v1::GenerateResponse resp;
  tandem::v1::Finished finished;
  bool got_finished = false;
  while (reader->Read(&resp)) {
    if (resp.has_text()) {
      std::fwrite(resp.text().text().data(), 1, resp.text().text().size(), stdout);
      std::fflush(stdout);
    } else if (resp.has_finished()) {
      finished = resp.finished();
      got_finished = true;
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    std::fputc('\n', stdout);
    return ReportError(connect, status);
  }
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (got_finished && options.show_usage) {
    const auto& u = finished.usage();
    const double decode_s = u.total_seconds() - u.time_to_first_token_seconds();
    std::fprintf(stderr,
                 "[%s · model %s v%lld · %d prompt + %d completion tokens · first token %.3f s · "
                 "%.1f tokens/s · seed %llu]\n",
                 ReasonName(finished.reason()), finished.model().c_str(),
                 static_cast<long long>(finished.model_version()), u.prompt_tokens(),
                 u.completion_tokens(), u.time_to_first_token_seconds(),
                 decode_s > 0 ? (u.completion_tokens() - 1) / decode_s : 0.0,
                 static_cast<unsigned long long>(finished.seed()));
  }
  return 0;
}

int ListModels(const ConnectOptions& connect) {
  auto stub = Connect(connect);
  grpc::ClientContext ctx;
  SetDeadline(connect, &ctx);
  tandem::v1::ListModelsResponse resp;
  grpc::Status status = stub->ListModels(&ctx, tandem::v1::ListModelsRequest(), &resp);
  if (!status.ok()) return ReportError(connect, status);
  std::printf("%-20s %-6s %-8s %12s %8s %6s  %s\n", "NAME", "KIND", "VERSION", "PARAMETERS",
              "CONTEXT", "VOCAB", "SOURCE");
  for (const auto& m : resp.models()) {
    std::string source = m.train_job_id().empty()
                             ? m.source()
                             : absl::StrFormat("job %s step %d", m.train_job_id(), m.train_step());
    std::printf("%-20s %-6s %-8lld %12lld %8d %6d  %s%s\n",
                (m.name() + (m.is_default() ? "*" : "")).c_str(),
                m.kind() == tandem::v1::MODEL_KIND_IMAGE ? "image" : "text",
                static_cast<long long>(m.version()), static_cast<long long>(m.parameters()),
                m.context_length(), m.vocab_size(), source.c_str(),
                m.devices().empty() ? "" : ("  on " + absl::StrJoin(m.devices(), ",")).c_str());
  }
  if (resp.models().empty()) std::printf("(no models)\n");
  return 0;
}

}  // namespace tandem::client

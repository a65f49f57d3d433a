#include "client/commands.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "models/formats/png.h"
#include "tandem/v1/inference.grpc.pb.h"

namespace tandem::client {
std::shared_ptr<grpc::Channel> OpenChannel(const ConnectOptions& connect) {
  grpc::ChannelArguments args;
  // Images, and training snapshots carrying eval image samples, can be large.
  args.SetMaxReceiveMessageSize(64 << 20);
  return OpenSecureChannel(connect.server, connect.security, args);
}

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
    std::fprintf(stderr, "tandem: cannot reach the server at %s (UNAVAILABLE: %s)%s\n",
                 connect.server.c_str(), status.error_message().c_str(),
                 connect.security.tls ? "" : "; if it speaks TLS, pass --tls_ca (or --tls)");
    return 3;
  }
  std::fprintf(stderr, "tandem: %s: %s\n", CodeName(status.error_code()),
               status.error_message().c_str());
  return 1;
}

std::unique_ptr<tandem::v1::Inference::Stub> Connect(const ConnectOptions& connect) {
  return tandem::v1::Inference::NewStub(OpenChannel(connect));
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

namespace {

std::string NumberedPath(const std::string& path, int i) {
  const size_t dot = path.rfind('.');
  const size_t slash = path.rfind('/');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) {
    return absl::StrFormat("%s-%d", path, i);
  }
  return absl::StrFormat("%s-%d%s", path.substr(0, dot), i, path.substr(dot));
}

bool WriteBytes(const std::string& path, const std::string& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  ok = std::fclose(f) == 0 && ok;
  return ok;
}

}  // namespace

int GenerateImage(const ConnectOptions& connect, const ImageOptions& options) {
  tandem::v1::GenerateRequest req;
  req.set_model(options.model);
  req.set_prompt(options.prompt);
  auto* p = req.mutable_image();
  if (options.steps != 0) p->set_steps(options.steps);
  if (options.guidance != 0) p->set_guidance_scale(options.guidance);
  p->set_seed(options.seed);
  p->set_num_images(options.n);
  p->set_negative_prompt(options.negative_prompt);
  if (options.sampler == "ddim") {
    p->set_sampler(tandem::v1::SAMPLER_DDIM);
  } else if (options.sampler == "ddpm") {
    p->set_sampler(tandem::v1::SAMPLER_DDPM);
  } else {
    std::fprintf(stderr, "tandem: --sampler must be ddim or ddpm\n");
    return 2;
  }
  p->set_eta(options.eta);
  p->set_preview_every(options.preview_every);

  auto stub = Connect(connect);
  grpc::ClientContext ctx;
  SetDeadline(connect, &ctx);
  auto reader = stub->Generate(&ctx, req);
  tandem::v1::GenerateResponse resp;
  std::vector<tandem::v1::Image> images;
  tandem::v1::Finished finished;
  bool got_finished = false;
  while (reader->Read(&resp)) {
    if (resp.has_progress() && options.progress) {
      const auto& pr = resp.progress();
      const int width = 30;
      const int filled = pr.total() > 0 ? pr.step() * width / pr.total() : 0;
      std::fprintf(stderr, "\r[%s%s] step %d/%d", std::string(filled, '#').c_str(),
                   std::string(width - filled, '.').c_str(), pr.step(), pr.total());
      std::fflush(stderr);
    } else if (resp.has_image()) {
      images.push_back(resp.image());
    } else if (resp.has_finished()) {
      finished = resp.finished();
      got_finished = true;
    }
  }
  if (options.progress) std::fprintf(stderr, "\n");
  grpc::Status status = reader->Finish();
  if (!status.ok()) return ReportError(connect, status);

  std::vector<std::string> written;
  if (images.size() == 1) {
    if (!WriteBytes(options.output, images[0].png())) {
      std::fprintf(stderr, "tandem: cannot write %s\n", options.output.c_str());
      return 1;
    }
    written.push_back(options.output);
  } else if (options.grid) {
    std::vector<RawImage> raws;
    for (const auto& im : images) {
      absl::StatusOr<RawImage> raw = DecodePng(im.png());
      if (!raw.ok()) {
        std::fprintf(stderr, "tandem: the server sent a bad PNG: %s\n",
                     raw.status().ToString().c_str());
        return 1;
      }
      raws.push_back(*std::move(raw));
    }
    int cols = 1;
    while (cols * cols < static_cast<int>(raws.size())) ++cols;
    absl::StatusOr<RawImage> grid = TileImages(raws, cols);
    absl::StatusOr<std::string> png = grid.ok() ? EncodePng(*grid)
                                                : absl::StatusOr<std::string>(grid.status());
    if (!png.ok() || !WriteBytes(options.output, *png)) {
      std::fprintf(stderr, "tandem: cannot write the grid %s\n", options.output.c_str());
      return 1;
    }
    written.push_back(options.output);
  } else {
    for (const auto& im : images) {
      const std::string path = NumberedPath(options.output, im.index());
      if (!WriteBytes(path, im.png())) {
        std::fprintf(stderr, "tandem: cannot write %s\n", path.c_str());
        return 1;
      }
      written.push_back(path);
    }
  }
  if (got_finished) {
    const auto& u = finished.usage();
    std::fprintf(stderr, "[%d image%s · %d steps · model %s v%lld · first step %.3f s · %.2f s · "
                 "seed %llu] %s\n",
                 u.images(), u.images() == 1 ? "" : "s", u.steps(), finished.model().c_str(),
                 static_cast<long long>(finished.model_version()),
                 u.time_to_first_token_seconds(), u.total_seconds(),
                 static_cast<unsigned long long>(finished.seed()),
                 absl::StrJoin(written, " ").c_str());
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
    const bool image = m.kind() == tandem::v1::MODEL_KIND_IMAGE;
    std::printf("%-20s %-6s %-8lld %12lld %8s %6d  %s%s\n",
                (m.name() + (m.is_default() ? "*" : "")).c_str(),
                m.kind() == tandem::v1::MODEL_KIND_IMAGE ? "image" : "text",
                static_cast<long long>(m.version()), static_cast<long long>(m.parameters()),
                image ? absl::StrFormat("%dx%d", m.image_size(), m.image_size()).c_str()
                      : absl::StrCat(m.context_length()).c_str(),
                m.vocab_size(), source.c_str(),
                m.devices().empty() ? "" : ("  on " + absl::StrJoin(m.devices(), ",")).c_str());
  }
  if (resp.models().empty()) std::printf("(no models)\n");
  return 0;
}

}  // namespace tandem::client

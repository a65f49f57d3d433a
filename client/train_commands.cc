// tandem train submit|watch|list|get|cancel|pause|resume: the Training service's client side.
// Formatting and spec assembly live in client/train_format.cc (unit-tested); this file does the
// calls, the files and the terminal.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/commands.h"
#include "client/train_format.h"
#include "tandem/v1/training.grpc.pb.h"

namespace tandem::client {
namespace {

using tandem::v1::TrainJob;
using tandem::v1::TrainJobEvent;
using tandem::v1::TrainJobState;
using tandem::v1::TrainKind;
using tandem::v1::Training;

// "tandem: CODE: message" on stderr; every RPC failure of `tandem train` exits 2.
int ReportRpcError(const ConnectOptions& connect, const grpc::Status& status) {
  std::string message = status.error_message();
  if (message.empty()) message = "(no message)";
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    absl::StrAppend(&message, " (server ", connect.server, ")");
  }
  std::fprintf(stderr, "tandem: %s: %s\n",
               absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()))
                   .c_str(),
               message.c_str());
  return 2;
}

int BadArgument(const absl::Status& status) {
  std::fprintf(stderr, "tandem: %s\n", std::string(status.message()).c_str());
  return 2;
}

std::unique_ptr<Training::Stub> Connect(const ConnectOptions& connect) {
  return Training::NewStub(OpenChannel(connect));
}

void SetDeadline(const ConnectOptions& connect, grpc::ClientContext* ctx) {
  if (connect.timeout_seconds > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(
                          static_cast<int64_t>(connect.timeout_seconds * 1000)));
  }
}

std::string Clock(const google::protobuf::Timestamp& ts) {
  const absl::Time t = ts.seconds() != 0 || ts.nanos() != 0
                           ? absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos())
                           : absl::Now();
  return absl::FormatTime("[%H:%M:%S]", t, absl::LocalTimeZone());
}

bool WriteFile(const std::string& path, const std::string& bytes, std::string* error) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    *error = std::strerror(errno);
    return false;
  }
  bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  if (!ok) *error = std::strerror(errno);
  if (std::fclose(f) != 0 && ok) {
    *error = std::strerror(errno);
    ok = false;
  }
  return ok;
}

// --- Ctrl-C during a watch ----------------------------------------------------------------------

std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free, "used from a signal handler");

extern "C" void OnInterrupt(int) { g_interrupted.store(true); }

// While alive, SIGINT cancels the call (from a helper thread: TryCancel is not signal-safe) instead
// of killing the process; CancelIn() also cancels it after a grace period.
class InterruptGuard {
 public:
  explicit InterruptGuard(grpc::ClientContext* ctx) : ctx_(ctx) {
    g_interrupted.store(false);
    struct sigaction sa = {};
    sa.sa_handler = OnInterrupt;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &previous_);
    thread_ = std::thread([this] { Loop(); });
  }
  ~InterruptGuard() {
    done_.store(true);
    thread_.join();
    sigaction(SIGINT, &previous_, nullptr);
  }
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

  void CancelIn(absl::Duration d) { cancel_at_ns_.store(absl::ToUnixNanos(absl::Now() + d)); }
  bool interrupted() const { return g_interrupted.load(); }

 private:
  void Loop() {
    while (!done_.load()) {
      const int64_t at = cancel_at_ns_.load();
      if (g_interrupted.load() || (at != 0 && absl::ToUnixNanos(absl::Now()) >= at)) {
        ctx_->TryCancel();
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  grpc::ClientContext* const ctx_;
  struct sigaction previous_ = {};
  std::atomic<bool> done_{false};
  std::atomic<int64_t> cancel_at_ns_{0};
  std::thread thread_;
};

// --- watch output -------------------------------------------------------------------------------

// On a terminal: one progress line redrawn in place, other lines printed above it. Otherwise:
// plain lines, progress at most once per second (the latest one is flushed before other lines
// and at the end, so the last step always shows).
class WatchPrinter {
 public:
  WatchPrinter() : tty_(isatty(STDOUT_FILENO) == 1) {}

  void Progress(const tandem::v1::TrainMetrics& m, TrainKind kind) {
    const absl::Time now = absl::Now();
    if (tty_) {
      bar_ = FitProgressLine(m, kind, Columns());
      std::fputs(absl::StrCat("\r", bar_, "\x1b[K").c_str(), stdout);
      std::fflush(stdout);
      return;
    }
    pending_ = FormatProgressLine(m, kind);
    const bool last = m.total_steps() > 0 && m.step() >= m.total_steps();
    if (last || now - last_plain_ >= absl::Seconds(1)) FlushPending(now);
  }

  // `text`: one or more lines.
  void Lines(const std::string& text) {
    if (tty_ && !bar_.empty()) std::fputs("\r\x1b[K", stdout);
    if (!tty_) FlushPending(absl::Now());
    std::fputs(text.c_str(), stdout);
    if (text.empty() || text.back() != '\n') std::fputc('\n', stdout);
    if (tty_ && !bar_.empty()) std::fputs(bar_.c_str(), stdout);
    std::fflush(stdout);
  }

  // Ends the live line (before anything else prints, e.g. on stderr).
  void End() {
    if (tty_ && !bar_.empty()) std::fputc('\n', stdout);
    bar_.clear();
    if (!tty_) FlushPending(absl::Now());
    std::fflush(stdout);
  }

 private:
  void FlushPending(absl::Time now) {
    if (pending_.empty()) return;
    std::fputs((pending_ + "\n").c_str(), stdout);
    pending_.clear();
    last_plain_ = now;
  }

  static int Columns() {
    struct winsize ws = {};
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    return 80;
  }

  const bool tty_;
  std::string bar_;      // tty: the live line
  std::string pending_;  // not a tty: the newest progress line not printed yet
  absl::Time last_plain_ = absl::InfinitePast();
};

std::string Header(const TrainJob& job) {
  std::vector<std::string> parts = {job.id()};
  if (!job.spec().name().empty()) parts.push_back(job.spec().name());
  parts.push_back(KindName(job.spec().kind()));
  std::string state = StateName(job.state());
  if (job.attempt() > 1) absl::StrAppend(&state, " (attempt ", job.attempt(), ")");
  parts.push_back(state);
  const int64_t total = job.latest().total_steps() > 0 ? job.latest().total_steps()
                                                       : job.spec().hyperparameters().steps();
  if (total > 0) parts.push_back(absl::StrCat("step ", job.latest().step(), "/", total));
  return absl::StrJoin(parts, kDot);
}

// The end of a watch (or a watch of a job already over): summary, and the exit code.
int ReportFinal(const TrainJob& job) {
  switch (job.state()) {
    case tandem::v1::SUCCEEDED: {
      std::vector<std::string> parts = {absl::StrCat(job.id(), " SUCCEEDED")};
      if (job.latest().step() > 0) {
        parts.push_back(absl::StrFormat("step %d", job.latest().step()));
        parts.push_back(absl::StrFormat("loss %.4f", job.latest().loss()));
      }
      if (job.has_best_eval()) {
        parts.push_back(absl::StrFormat("best eval loss %.4f at step %d", job.best_eval().loss(),
                                        job.best_eval().step()));
      }
      if (!job.deployed_as().empty()) {
        parts.push_back(absl::StrCat("deployed as ", job.deployed_as(), " (step ",
                                     job.deployed_step(), ")"));
      }
      std::printf("%s\n", absl::StrJoin(parts, kDot).c_str());
      return 0;
    }
    case tandem::v1::FAILED:
      std::fflush(stdout);
      std::fprintf(stderr, "tandem: %s FAILED: %s\n", job.id().c_str(),
                   job.error().empty() ? "(no error message)" : job.error().c_str());
      return 1;
    case tandem::v1::CANCELLED:
      std::printf("%s CANCELLED\n", job.id().c_str());
      return 1;
    default:
      return 2;
  }
}

// What a watch has seen of the job so far.
struct Watched {
  TrainJobState state = tandem::v1::TRAIN_JOB_STATE_UNSPECIFIED;
  TrainKind kind = tandem::v1::TRAIN_KIND_UNSPECIFIED;
};

// An evaluation's lines: the result, its text sample, where its image sample went.
std::string EvalLines(const TrainJobEvent& e, const std::string& id,
                      const TrainWatchOptions& options) {
  const auto& eval = e.eval();
  std::string text = absl::StrCat(Clock(e.time()), " ", FormatEvalLine(eval), "\n");
  if (!eval.text_sample().empty()) absl::StrAppend(&text, IndentSample(eval.text_sample()));
  if (!eval.image_sample_png().empty()) {
    const std::string path = SamplePath(options.samples_dir, id, eval.step());
    std::string error;
    if (WriteFile(path, eval.image_sample_png(), &error)) {
      absl::StrAppend(&text, "  sample: ", path, "\n");
    } else {
      absl::StrAppend(&text, "  sample: cannot write ", path, ": ", error, "\n");
    }
  }
  return text;
}

// Prints one event of the watch stream; updates *seen.
void ShowEvent(const TrainJobEvent& e, const std::string& id, const TrainWatchOptions& options,
               WatchPrinter& out, Watched* seen) {
  switch (e.event_case()) {
    case TrainJobEvent::kSnapshot: {
      const TrainJob& job = e.snapshot();
      seen->state = job.state();
      seen->kind = job.spec().kind();
      out.Lines(Header(job));
      if (job.latest().step() > 0 && !IsFinalState(seen->state)) {
        out.Progress(job.latest(), seen->kind);
      }
      break;
    }
    case TrainJobEvent::kState:
      seen->state = e.state();
      if (IsFinalState(seen->state)) out.End();  // the last progress line stays, above
      out.Lines(absl::StrCat(Clock(e.time()), " ", StateName(seen->state)));
      break;
    case TrainJobEvent::kMetrics:
      out.Progress(e.metrics(), seen->kind);
      break;
    case TrainJobEvent::kEval:
      out.Lines(EvalLines(e, id, options));
      break;
    case TrainJobEvent::kLog:
      out.Lines(absl::StrCat(Clock(e.time()), " ", e.log()));
      break;
    default:
      break;
  }
}

// After the watch stream ended in `state`: the job as it ended (error message, best eval,
// deployment), fetched again, reported; the exit code.
int ReportWatchEnd(Training::Stub* stub, const ConnectOptions& connect, const std::string& id,
                   TrainJobState state) {
  grpc::ClientContext get_ctx;
  get_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  tandem::v1::GetTrainJobRequest get;
  get.set_id(id);
  TrainJob job;
  grpc::Status got = stub->GetTrainJob(&get_ctx, get, &job);
  if (!got.ok()) {
    if (!IsFinalState(state)) return ReportRpcError(connect, got);
    job.set_id(id);
    job.set_state(state);
  }
  if (!IsFinalState(job.state())) {
    std::fprintf(stderr, "tandem: the server ended the watch while %s is %s\n", id.c_str(),
                 StateName(job.state()).c_str());
    return 2;
  }
  return ReportFinal(job);
}

int WatchWith(Training::Stub* stub, const ConnectOptions& connect, const std::string& id,
              const TrainWatchOptions& options) {
  grpc::ClientContext ctx;  // no deadline: a watch lasts as long as the job
  tandem::v1::WatchTrainJobRequest req;
  req.set_id(id);
  req.set_replay(options.replay);
  WatchPrinter out;
  Watched seen;
  grpc::Status status;
  bool interrupted = false;
  {
    InterruptGuard guard(&ctx);
    auto reader = stub->WatchTrainJob(&ctx, req);
    TrainJobEvent e;
    while (reader->Read(&e)) {
      ShowEvent(e, id, options, out, &seen);
      // The server ends the stream after a final state; should it not, stop shortly after.
      if (IsFinalState(seen.state)) guard.CancelIn(absl::Seconds(3));
    }
    status = reader->Finish();
    interrupted = guard.interrupted();
  }
  out.End();
  if (interrupted) {
    std::fprintf(stderr, "tandem: stopped watching %s (the job goes on; `tandem train watch %s` "
                 "to watch again)\n", id.c_str(), id.c_str());
    return 130;
  }
  if (!status.ok() &&
      !(IsFinalState(seen.state) && status.error_code() == grpc::StatusCode::CANCELLED)) {
    return ReportRpcError(connect, status);
  }
  return ReportWatchEnd(stub, connect, id, seen.state);
}

}  // namespace

int TrainSubmit(const ConnectOptions& connect, const TrainSubmitOptions& options) {
  tandem::v1::TrainJobSpec spec;
  if (!options.spec_file.empty()) {
    absl::StatusOr<tandem::v1::TrainJobSpec> parsed = ReadTrainJobSpecFile(options.spec_file);
    if (!parsed.ok()) {
      if (parsed.status().code() == absl::StatusCode::kInvalidArgument) {
        return BadArgument(parsed.status());
      }
      std::fprintf(stderr, "tandem: --spec: %s\n", std::string(parsed.status().message()).c_str());
      return 2;
    }
    spec = *std::move(parsed);
  }
  if (absl::Status s = ApplyTrainSpecFlags(options.flags, &spec); !s.ok()) return BadArgument(s);

  auto stub = Connect(connect);
  grpc::ClientContext ctx;
  SetDeadline(connect, &ctx);
  tandem::v1::SubmitTrainJobRequest req;
  *req.mutable_spec() = spec;
  TrainJob job;
  grpc::Status status = stub->SubmitTrainJob(&ctx, req, &job);
  if (!status.ok()) return ReportRpcError(connect, status);
  // The id alone first, for scripts: id=$(tandem train submit ... | head -1)
  std::printf("%s\n", job.id().c_str());
  std::vector<std::string> summary = {absl::StrCat("submitted ", job.id())};
  if (!job.spec().name().empty()) summary.push_back(job.spec().name());
  summary.push_back(KindName(job.spec().kind()));
  if (!job.spec().dataset().empty()) summary.push_back("dataset " + job.spec().dataset());
  if (!job.spec().init_from().empty()) summary.push_back("from " + job.spec().init_from());
  if (job.spec().hyperparameters().steps() > 0) {
    summary.push_back(absl::StrCat(job.spec().hyperparameters().steps(), " steps"));
  }
  if (!job.spec().deploy_as().empty()) summary.push_back("deploy as " + job.spec().deploy_as());
  summary.push_back(StateName(job.state()));
  std::printf("%s\n", absl::StrJoin(summary, kDot).c_str());
  std::fflush(stdout);
  if (!options.watch) return 0;
  return WatchWith(stub.get(), connect, job.id(), options.watch_options);
}

int TrainWatch(const ConnectOptions& connect, const std::string& id,
               const TrainWatchOptions& options) {
  auto stub = Connect(connect);
  return WatchWith(stub.get(), connect, id, options);
}

int TrainList(const ConnectOptions& connect, const std::string& states) {
  absl::StatusOr<std::vector<TrainJobState>> parsed = ParseStateList(states);
  if (!parsed.ok()) return BadArgument(parsed.status());
  auto stub = Connect(connect);
  grpc::ClientContext ctx;
  SetDeadline(connect, &ctx);
  tandem::v1::ListTrainJobsRequest req;
  for (TrainJobState s : *parsed) req.add_states(s);
  tandem::v1::ListTrainJobsResponse resp;
  grpc::Status status = stub->ListTrainJobs(&ctx, req, &resp);
  if (!status.ok()) return ReportRpcError(connect, status);
  if (resp.jobs().empty()) {
    std::printf("(no training jobs)\n");
    return 0;
  }
  std::fputs(FormatJobTable({resp.jobs().begin(), resp.jobs().end()}).c_str(), stdout);
  return 0;
}

int TrainGet(const ConnectOptions& connect, const std::string& id, bool history, bool json) {
  auto stub = Connect(connect);
  grpc::ClientContext ctx;
  SetDeadline(connect, &ctx);
  tandem::v1::GetTrainJobRequest req;
  req.set_id(id);
  req.set_include_history(history);
  TrainJob job;
  grpc::Status status = stub->GetTrainJob(&ctx, req, &job);
  if (!status.ok()) return ReportRpcError(connect, status);
  if (json) {
    google::protobuf::util::JsonPrintOptions print;
    print.add_whitespace = true;
    print.preserve_proto_field_names = true;
    std::string text;
    const auto s = google::protobuf::util::MessageToJsonString(job, &text, print);
    if (!s.ok()) {
      std::fprintf(stderr, "tandem: cannot print the job as JSON: %s\n", s.ToString().c_str());
      return 2;
    }
    std::fputs(text.c_str(), stdout);
    if (text.empty() || text.back() != '\n') std::fputc('\n', stdout);
    return 0;
  }
  std::fputs(FormatJobDetails(job, absl::LocalTimeZone()).c_str(), stdout);
  if (history) std::fputs(FormatHistory(job).c_str(), stdout);
  return 0;
}

int TrainControl(const ConnectOptions& connect, TrainAction action, const std::string& id) {
  auto stub = Connect(connect);
  grpc::ClientContext ctx;
  SetDeadline(connect, &ctx);
  TrainJob job;
  grpc::Status status;
  switch (action) {
    case TrainAction::kCancel: {
      tandem::v1::CancelTrainJobRequest req;
      req.set_id(id);
      status = stub->CancelTrainJob(&ctx, req, &job);
      break;
    }
    case TrainAction::kPause: {
      tandem::v1::PauseTrainJobRequest req;
      req.set_id(id);
      status = stub->PauseTrainJob(&ctx, req, &job);
      break;
    }
    case TrainAction::kResume: {
      tandem::v1::ResumeTrainJobRequest req;
      req.set_id(id);
      status = stub->ResumeTrainJob(&ctx, req, &job);
      break;
    }
  }
  if (!status.ok()) return ReportRpcError(connect, status);
  std::printf("%s %s\n", job.id().empty() ? id.c_str() : job.id().c_str(),
              StateName(job.state()).c_str());
  return 0;
}

}  // namespace tandem::client

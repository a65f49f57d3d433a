// The tandem client's commands. Each returns the process exit code: 0 on success, 1 when the
// server answered with an error, 2 for bad arguments, 3 when the server cannot be reached.
// Errors are one line on stderr: "tandem: CODE: message".
#ifndef TANDEM_CLIENT_COMMANDS_H_
#define TANDEM_CLIENT_COMMANDS_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "client/channel.h"
#include "client/train_format.h"

namespace tandem::client {

struct ConnectOptions {
  std::string server = "localhost:50051";
  double timeout_seconds = 0;  // 0: no deadline
  ChannelSecurity security;    // TLS and the bearer token (channel.h)
};

// The channel every command's stub uses (64 MiB messages for images).
std::shared_ptr<grpc::Channel> OpenChannel(const ConnectOptions& connect);

struct GenerateOptions {
  std::string model;
  std::string prompt;
  std::optional<int> max_tokens;
  float temperature = 0;
  int top_k = 0;
  std::optional<float> top_p;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  bool show_usage = true;  // a summary line on stderr at the end
};

struct ImageOptions {
  std::string model;
  std::string prompt;
  std::string negative_prompt;
  std::string output = "image.png";  // with n > 1: name-0.png, name-1.png... (or one grid)
  int n = 1;
  bool grid = false;  // with n > 1: one image with the n side by side
  int steps = 0;      // 0: the model's default
  float guidance = 0; // 0: the model's default
  uint64_t seed = 0;
  std::string sampler = "ddim";  // ddim | ddpm
  float eta = 0;
  int preview_every = 0;
  bool progress = true;  // a progress bar on stderr
};

int Generate(const ConnectOptions& connect, const GenerateOptions& options);
int GenerateImage(const ConnectOptions& connect, const ImageOptions& options);
int ListModels(const ConnectOptions& connect);

// --- tandem train (client/train_commands.cc) --------------------------------------------------
// Exit codes differ from the commands above: 0 ok (watch: the job SUCCEEDED), 1 the watched job
// FAILED or was CANCELLED, 2 bad arguments or any RPC error ("tandem: CODE: message"), 130 when
// Ctrl-C stopped a watch (the job keeps running).

struct TrainWatchOptions {
  std::string samples_dir = ".";  // eval image samples: <dir>/<job>-step<N>.png
  bool replay = false;            // first print the job's past events (evals, logs...)
};

struct TrainSubmitOptions {
  std::string spec_file;  // TrainJobSpec in protobuf JSON; empty: from flags only
  TrainSpecFlags flags;   // override the file's fields
  bool watch = false;     // then watch the job (exit code as TrainWatch)
  TrainWatchOptions watch_options;
};

enum class TrainAction { kCancel, kPause, kResume };

// Prints the job id alone on the first line of stdout, then a summary.
int TrainSubmit(const ConnectOptions& connect, const TrainSubmitOptions& options);
// Streams the job's progress until it ends: a live bar on a terminal, plain lines otherwise.
int TrainWatch(const ConnectOptions& connect, const std::string& id,
               const TrainWatchOptions& options);
// `states`: "running,queued" (empty: all).
int TrainList(const ConnectOptions& connect, const std::string& states);
int TrainGet(const ConnectOptions& connect, const std::string& id, bool history, bool json);
int TrainControl(const ConnectOptions& connect, TrainAction action, const std::string& id);

}  // namespace tandem::client

#endif  // TANDEM_CLIENT_COMMANDS_H_

// The tandem client's commands. Each returns the process exit code: 0 on success, 1 when the
// server answered with an error, 2 for bad arguments, 3 when the server cannot be reached.
// Errors are one line on stderr: "tandem: CODE: message".
#ifndef TANDEM_CLIENT_COMMANDS_H_
#define TANDEM_CLIENT_COMMANDS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tandem::client {

struct ConnectOptions {
  std::string server = "localhost:50051";
  double timeout_seconds = 0;  // 0: no deadline
};

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

int Generate(const ConnectOptions& connect, const GenerateOptions& options);
int ListModels(const ConnectOptions& connect);

}  // namespace tandem::client

#endif  // TANDEM_CLIENT_COMMANDS_H_

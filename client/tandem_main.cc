// tandem: command-line client of a tandemd server.
//   tandem [--server=HOST:PORT] generate [--model=M] [sampling flags] "prompt"
//   tandem [--server=HOST:PORT] models
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "client/commands.h"

ABSL_FLAG(std::string, server, "",
          "tandemd address HOST:PORT (default: $TANDEM_SERVER, else localhost:50051)");
ABSL_FLAG(double, timeout, 0, "Deadline of the call in seconds (0: none)");
ABSL_FLAG(std::string, model, "", "Model name (default: the server's default model)");
ABSL_FLAG(int, max_tokens, 0, "Tokens to generate at most (0: up to the context)");
ABSL_FLAG(double, temperature, 0.8, "Sampling temperature (0: greedy)");
ABSL_FLAG(int, top_k, 0, "Keep the k most likely tokens (0: off)");
ABSL_FLAG(double, top_p, 0.95, "Nucleus sampling mass in (0, 1]");
ABSL_FLAG(uint64_t, seed, 0, "Sampler seed (0: the server picks one and reports it)");
ABSL_FLAG(std::string, o, "image.png", "image: output PNG (numbered with --n > 1)");
ABSL_FLAG(int, n, 1, "image: images to generate");
ABSL_FLAG(bool, grid, false, "image: with --n > 1, write one grid instead of numbered files");
ABSL_FLAG(int, steps, 0, "image: denoising steps (0: the model's default)");
ABSL_FLAG(double, guidance, 0, "image: classifier-free guidance scale (0: default, 1: none)");
ABSL_FLAG(std::string, negative, "", "image: negative prompt");
ABSL_FLAG(std::string, sampler, "ddim", "image: ddim or ddpm");
ABSL_FLAG(double, eta, 0, "image: DDIM eta in [0, 1]");
ABSL_FLAG(int, preview_every, 0, "image: ask for a preview every N steps");
ABSL_FLAG(bool, usage, true, "Print a summary line (reason, tokens, speed) on stderr");

namespace {

constexpr char kUsage[] =
    "tandem [--server=HOST:PORT] <command> [flags]\n"
    "commands:\n"
    "  generate [--model=M] [--max_tokens=N] [--temperature=T] [--top_k=K] [--top_p=P]\n"
    "           [--seed=S] [--stop=STR]... \"prompt\"   stream a completion\n"
    "  image [--model=M] [--steps=N] [--guidance=G] [--seed=S] [--negative=TEXT]\n"
    "        [--sampler=ddim|ddpm] [--eta=E] [--n=N [--grid]] -o out.png \"caption\"\n"
    "                                                  generate images with a progress bar\n"
    "  models                                          list the served models\n";

// --stop may repeat (absl flags keep only the last value), so it is taken out of argv first.
std::vector<std::string> ExtractStops(int* argc, char** argv) {
  std::vector<std::string> stops;
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    std::string a = argv[i];
    if (absl::StartsWith(a, "--stop=")) {
      stops.push_back(a.substr(7));
    } else if (a == "--stop" && i + 1 < *argc) {
      stops.push_back(argv[++i]);
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
  return stops;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  std::vector<std::string> stops = ExtractStops(&argc, argv);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    std::fprintf(stderr, "%s", kUsage);
    return 2;
  }
  tandem::client::ConnectOptions connect;
  connect.server = absl::GetFlag(FLAGS_server);
  if (connect.server.empty()) {
    const char* env = std::getenv("TANDEM_SERVER");
    connect.server = env && *env ? env : "localhost:50051";
  }
  connect.timeout_seconds = absl::GetFlag(FLAGS_timeout);
  const std::string command = args[1];
  if (command == "generate") {
    if (args.size() != 3) {
      std::fprintf(stderr, "tandem: generate takes one prompt argument (quote it)\n");
      return 2;
    }
    tandem::client::GenerateOptions o;
    o.model = absl::GetFlag(FLAGS_model);
    o.prompt = args[2];
    if (absl::GetFlag(FLAGS_max_tokens) != 0) o.max_tokens = absl::GetFlag(FLAGS_max_tokens);
    o.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
    o.top_k = absl::GetFlag(FLAGS_top_k);
    o.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
    o.seed = absl::GetFlag(FLAGS_seed);
    o.stop = stops;
    o.show_usage = absl::GetFlag(FLAGS_usage);
    return tandem::client::Generate(connect, o);
  }
  if (command == "image") {
    if (args.size() != 3) {
      std::fprintf(stderr, "tandem: image takes one caption argument (quote it)\n");
      return 2;
    }
    tandem::client::ImageOptions o;
    o.model = absl::GetFlag(FLAGS_model);
    o.prompt = args[2];
    o.negative_prompt = absl::GetFlag(FLAGS_negative);
    o.output = absl::GetFlag(FLAGS_o);
    o.n = absl::GetFlag(FLAGS_n);
    o.grid = absl::GetFlag(FLAGS_grid);
    o.steps = absl::GetFlag(FLAGS_steps);
    o.guidance = static_cast<float>(absl::GetFlag(FLAGS_guidance));
    o.seed = absl::GetFlag(FLAGS_seed);
    o.sampler = absl::GetFlag(FLAGS_sampler);
    o.eta = static_cast<float>(absl::GetFlag(FLAGS_eta));
    o.preview_every = absl::GetFlag(FLAGS_preview_every);
    o.progress = absl::GetFlag(FLAGS_usage);
    return tandem::client::GenerateImage(connect, o);
  }
  if (command == "models") {
    if (args.size() != 2) {
      std::fprintf(stderr, "tandem: models takes no arguments\n");
      return 2;
    }
    return tandem::client::ListModels(connect);
  }
  std::fprintf(stderr, "tandem: unknown command \"%s\"\n%s", command.c_str(), kUsage);
  return 2;
}

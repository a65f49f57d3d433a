// tandem-bench: load benchmark of a running tandemd. For each stream count N it opens N concurrent
// Generate streams and reports time to first token and inter-token latency (p50, p99), aggregate
// tokens/s, and the fraction of the machine's matmul peak (measured here, in the same run, through
// the same LibTorch build and thread count) that the model's useful arithmetic reaches.
// --mode=overhead measures what serving adds to the model instead: the p50 latency of 1-token
// Generate calls, one at a time, against the same work done in-process here (tokenize, prefill,
// sample, detokenize) on the model directory's own copy of the model.
//
//   tandem-bench --server=HOST:PORT --model_dir=DIR --streams=1,8,32 --max_tokens=128
//   tandem-bench --server=HOST:PORT --model_dir=DIR --mode=overhead --threads=N
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_client.h"
#include "bench/colocate.h"
#include "models/torch/device.h"
#include "models/torch/matmul_peak.h"
#include "models/llama/llama.h"
#include "client/channel.h"
#include "models/model_dir.h"
#include "models/text/sampler.h"
#include "models/torch/device.h"
#include "tandem/v1/inference.grpc.pb.h"

ABSL_FLAG(std::string, server, "localhost:50051", "tandemd address");
ABSL_FLAG(bool, tls, false, "Connect with TLS, trusting the system's CAs (implied by --tls_ca)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA bundle the server's certificate must chain to");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate (mutual TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, token_file, "", "File holding the bearer token (default: $TANDEM_TOKEN)");
ABSL_FLAG(std::string, model, "", "Model name (default: the server's default)");
ABSL_FLAG(std::string, model_dir, "",
          "The model's directory, for its shape (FLOPs per token); required for the peak fraction");
ABSL_FLAG(std::string, streams, "1,8,32", "Comma-separated concurrent stream counts");
ABSL_FLAG(int, max_tokens, 128, "Tokens generated per stream");
ABSL_FLAG(int, rounds, 1, "Streams each client opens one after another per measurement");
ABSL_FLAG(std::string, prompt, "Once upon a time", "Prompt of every stream");
ABSL_FLAG(int, threads, 0, "Threads for the matmul peak (0: all cores; match tandemd --threads)");
ABSL_FLAG(double, peak_seconds, 1.0, "Timing per matrix size for the peak");
ABSL_FLAG(std::string, device, "cpu", "Device for the matmul peak (the server's device)");
ABSL_FLAG(bool, skip_peak, false, "Do not measure the matmul peak");
ABSL_FLAG(std::string, mode, "text",
          "text: LLM streams; image: diffusion requests; colocate: serving beside training "
          "(bench/colocate.h); overhead: 1-token calls against the same work in-process");
ABSL_FLAG(int, requests, 200, "overhead: 1-token calls (and in-process repetitions) to time");
ABSL_FLAG(int, steps, 50, "image: DDIM steps per request");
ABSL_FLAG(double, guidance, 3.0, "image: guidance scale");
ABSL_FLAG(std::string, caption, "a photo of a sneaker", "image: caption of every request");

namespace {

using tandem::bench::ImageStats;
using tandem::bench::Percentile;
using tandem::bench::RunImage;
using tandem::bench::RunStream;
using tandem::bench::SecondsBetween;
using tandem::bench::StreamStats;
using Clock = tandem::bench::Clock;
using tandem::v1::GenerateRequest;
using tandem::v1::GenerateResponse;
using tandem::v1::Inference;

// The model's shape from --model_dir, for the useful FLOPs of a stream.
struct ModelShape {
  bool known = false;
  tandem::LlamaConfig config;
};

// Useful work of a stream: the prompt's prefill plus one forward per generated token, each at its
// own context position (the last generated token is never fed back).
double StreamFlops(const tandem::LlamaConfig& cfg, const StreamStats& s) {
  double flops = 0;
  for (int p = 0; p < s.prompt_tokens; ++p) flops += cfg.FlopsPerToken(p);
  for (int t = 0; t + 1 < s.tokens; ++t) flops += cfg.FlopsPerToken(s.prompt_tokens + t);
  return flops;
}

// n clients, each opening --rounds streams one after another; all streams' stats.
std::vector<StreamStats> TextRound(Inference::Stub* stub, const GenerateRequest& req, int n,
                                   double* wall) {
  const int rounds = absl::GetFlag(FLAGS_rounds);
  std::vector<StreamStats> stats(static_cast<size_t>(n) * rounds);
  std::vector<std::thread> threads;
  const auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      for (int r = 0; r < rounds; ++r) {
        GenerateRequest q = req;
        q.set_request_id(absl::StrCat("bench-", n, "-", i, "-", r));
        stats[static_cast<size_t>(i) * rounds + r] = RunStream(stub, q);
      }
    });
  }
  for (auto& t : threads) t.join();
  *wall = SecondsBetween(t0, Clock::now());
  return stats;
}

int RunTextBench(Inference::Stub* stub, const std::vector<int>& counts, const ModelShape& shape,
                 const tandem::MatmulPeak& peak) {
  GenerateRequest req;
  req.set_model(absl::GetFlag(FLAGS_model));
  req.set_prompt(absl::GetFlag(FLAGS_prompt));
  req.mutable_text()->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  req.mutable_text()->set_temperature(0);
  req.mutable_text()->set_include_token_ids(true);

  // Warm-up: one short stream (first-touch allocations, connection).
  GenerateRequest warm = req;
  warm.mutable_text()->set_max_tokens(8);
  if (StreamStats s = RunStream(stub, warm); !s.ok) {
    std::fprintf(stderr, "tandem-bench: warm-up failed: %s\n", s.error.c_str());
    return 1;
  }

  std::printf("\n%8s %10s %10s %10s %10s %12s %10s %10s\n", "streams", "ttft_p50", "ttft_p99",
              "itl_p50", "itl_p99", "tokens/s", "x_single", "peak_frac");
  double single_rate = 0;
  for (int n : counts) {
    double wall = 0;
    const std::vector<StreamStats> stats = TextRound(stub, req, n, &wall);
    std::vector<double> ttfts, gaps;
    int64_t tokens = 0;
    double flops = 0;
    for (const auto& s : stats) {
      if (!s.ok) {
        std::fprintf(stderr, "tandem-bench: a stream failed: %s\n", s.error.c_str());
        return 1;
      }
      ttfts.push_back(s.ttft);
      gaps.insert(gaps.end(), s.gaps.begin(), s.gaps.end());
      tokens += s.tokens;
      if (shape.known) flops += StreamFlops(shape.config, s);
    }
    const double rate = tokens / wall;
    if (n == counts.front()) single_rate = rate;
    const double frac = peak.gflops > 0 && shape.known ? flops / wall / 1e9 / peak.gflops : 0;
    std::printf("%8d %9.1fms %9.1fms %9.2fms %9.2fms %12.1f %9.2fx %9.1f%%\n", n,
                Percentile(ttfts, 0.5) * 1e3, Percentile(ttfts, 0.99) * 1e3,
                Percentile(gaps, 0.5) * 1e3, Percentile(gaps, 0.99) * 1e3, rate,
                single_rate > 0 ? rate / single_rate : 0, frac * 100);
    std::fflush(stdout);
  }
  return 0;
}

// n concurrent requests with seeds seed0, seed0 + 1, ...; `at_step` as RunImage's, for each.
std::vector<ImageStats> ImageRound(Inference::Stub* stub, const GenerateRequest& req, int n,
                                   int seed0,
                                   const std::function<void(int step)>& at_step = nullptr) {
  std::vector<ImageStats> stats(n);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      GenerateRequest q = req;
      q.mutable_image()->set_seed(seed0 + i);
      stats[i] = RunImage(stub, q, at_step);
    });
  }
  for (auto& t : threads) t.join();
  return stats;
}

// The progress gaps of all the requests, or false (with the error printed) if one failed.
bool StepGaps(const std::vector<ImageStats>& stats, std::vector<double>* gaps,
              std::vector<double>* firsts) {
  for (const auto& st : stats) {
    if (!st.ok) {
      std::fprintf(stderr, "tandem-bench: a request failed: %s\n", st.error.c_str());
      return false;
    }
    gaps->insert(gaps->end(), st.step_gaps.begin(), st.step_gaps.end());
    firsts->push_back(st.first_step);
  }
  return true;
}

// Arrival mid-way: with `busy` requests half-way through, one more arrives; how long until its
// first step, against the batched step time it joins.
void ArrivalMidway(Inference::Stub* stub, const GenerateRequest& req, int busy,
                   double step_time_alone) {
  std::atomic<int> halfway{0};
  std::vector<ImageStats> stats;
  std::thread others([&] {
    stats = ImageRound(stub, req, busy, 2000, [&](int step) {
      if (step == absl::GetFlag(FLAGS_steps) / 2) halfway.fetch_add(1);
    });
  });
  while (halfway.load() < busy) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  GenerateRequest late = req;
  late.mutable_image()->set_seed(3000);
  const ImageStats arrival = RunImage(stub, late);
  others.join();
  std::vector<double> busy_gaps;
  for (const auto& st : stats) {
    busy_gaps.insert(busy_gaps.end(), st.step_gaps.begin(), st.step_gaps.end());
  }
  std::printf(
      "\narrival while %d requests are half-way: admitted to the device %.1f ms after "
      "the server accepted it; first step done %.1f ms after sending "
      "(batched step p50 %.1f ms, step alone %.1f ms)\n",
      busy, arrival.queue * 1e3, arrival.first_step * 1e3, Percentile(busy_gaps, 0.5) * 1e3,
      step_time_alone * 1e3);
}

int RunImageBench(Inference::Stub* stub, const std::vector<int>& counts) {
  GenerateRequest req;
  req.set_model(absl::GetFlag(FLAGS_model));
  req.set_prompt(absl::GetFlag(FLAGS_caption));
  req.mutable_image()->set_steps(absl::GetFlag(FLAGS_steps));
  req.mutable_image()->set_guidance_scale(static_cast<float>(absl::GetFlag(FLAGS_guidance)));
  req.mutable_image()->set_sampler(tandem::v1::SAMPLER_DDIM);
  GenerateRequest warm = req;
  warm.mutable_image()->set_steps(2);
  if (ImageStats s = RunImage(stub, warm); !s.ok) {
    std::fprintf(stderr, "tandem-bench: warm-up failed: %s\n", s.error.c_str());
    return 1;
  }
  std::printf("\n%9s %12s %12s %12s %10s\n", "requests", "images/s", "x_single", "step_p50",
              "first_step");
  double single = 0;
  double step_time_alone = 0;
  for (int n : counts) {
    const auto t0 = Clock::now();
    const std::vector<ImageStats> stats = ImageRound(stub, req, n, 1000);
    const double wall = SecondsBetween(t0, Clock::now());
    std::vector<double> gaps, firsts;
    if (!StepGaps(stats, &gaps, &firsts)) return 1;
    const double rate = n / wall;
    if (n == counts.front()) {
      single = rate;
      step_time_alone = Percentile(gaps, 0.5);
    }
    std::printf("%9d %12.3f %11.2fx %10.1fms %8.1fms\n", n, rate, single > 0 ? rate / single : 0,
                Percentile(gaps, 0.5) * 1e3, Percentile(firsts, 0.5) * 1e3);
    std::fflush(stdout);
  }
  ArrivalMidway(stub, req, std::max(1, counts.back() - 1), step_time_alone);
  return 0;
}

// --------------------------------------------------------------------------------- overhead

// What a 1-token Generate computes, done in-process: encode, prefill BOS + prompt, sample
// greedily, decode the token.
class InProcessOneToken {
 public:
  absl::Status Load(const std::string& model_dir) {
    absl::StatusOr<tandem::ModelDir> dir = tandem::ReadModelDir(model_dir);
    if (!dir.ok()) return dir.status();
    config_ = dir->llama;
    absl::StatusOr<std::unique_ptr<tandem::Tokenizer>> tok = tandem::LoadModelTokenizer(*dir);
    if (!tok.ok()) return tok.status();
    tokenizer_ = *std::move(tok);
    absl::StatusOr<tandem::SafetensorsFile> weights = tandem::ReadSafetensors(dir->weights_path());
    if (!weights.ok()) return weights.status();
    absl::StatusOr<std::unique_ptr<tandem::TextModel>> model =
        tandem::CreateLlamaModel(config_, weights->tensors, tandem::TextModelOptions{"cpu", 1});
    if (!model.ok()) return model.status();
    model_ = *std::move(model);
    logits_.resize(config_.vocab_size);
    return absl::OkStatus();
  }

  // Seconds of one call.
  absl::StatusOr<double> Run(const std::string& prompt) {
    const auto t0 = Clock::now();
    std::vector<int32_t> ids = {config_.bos_id};
    for (int32_t id : tokenizer_->Encode(prompt)) ids.push_back(id);
    absl::StatusOr<int> slot = model_->AcquireSlot();
    if (!slot.ok()) return slot.status();
    if (absl::Status s = model_->Prefill(*slot, ids, logits_.data()); !s.ok()) return s;
    tandem::Sampler sampler(tandem::SamplingParams{});
    const int32_t next = sampler.Sample(logits_.data(), config_.vocab_size);
    const std::string text = tokenizer_->Decode({&next, 1});
    model_->ReleaseSlot(*slot);
    return SecondsBetween(t0, Clock::now());
  }

 private:
  tandem::LlamaConfig config_;
  std::unique_ptr<tandem::Tokenizer> tokenizer_;
  std::unique_ptr<tandem::TextModel> model_;
  std::vector<float> logits_;
};

// The calls alternate with the in-process runs, so that both see the same machine.
int RunOverheadBench(Inference::Stub* stub) {
  const int n = absl::GetFlag(FLAGS_requests);
  if (absl::GetFlag(FLAGS_model_dir).empty()) {
    std::fprintf(stderr, "tandem-bench: --mode=overhead needs --model_dir\n");
    return 2;
  }
  const int threads = tandem::SetComputeThreads(absl::GetFlag(FLAGS_threads));
  InProcessOneToken local;
  if (absl::Status s = local.Load(absl::GetFlag(FLAGS_model_dir)); !s.ok()) {
    std::fprintf(stderr, "tandem-bench: %s\n", s.ToString().c_str());
    return 1;
  }
  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  GenerateRequest req;
  req.set_model(absl::GetFlag(FLAGS_model));
  req.set_prompt(prompt);
  req.mutable_text()->set_max_tokens(1);
  req.mutable_text()->set_temperature(0);
  std::vector<double> remote, in_process;
  for (int i = 0; i < n + 5; ++i) {  // 5 warm-up rounds first
    absl::StatusOr<double> here = local.Run(prompt);
    if (!here.ok()) {
      std::fprintf(stderr, "tandem-bench: %s\n", here.status().ToString().c_str());
      return 1;
    }
    tandem::bench::RunStats stats;
    const double s = tandem::bench::Stream(stub, req, [](const GenerateResponse&, double) {}, &stats);
    if (!stats.ok) {
      std::fprintf(stderr, "tandem-bench: a call failed: %s\n", stats.error.c_str());
      return 1;
    }
    if (i < 5) continue;
    remote.push_back(s);
    in_process.push_back(*here);
  }
  const double grpc_p50 = Percentile(remote, 0.5), local_p50 = Percentile(in_process, 0.5);
  std::printf(
      "\n1-token Generate, %d calls one at a time, prompt \"%s\" (in-process: %d threads)\n", n,
      prompt.c_str(), threads);
  std::printf("%-28s %9s %9s\n", "", "p50", "p99");
  std::printf("%-28s %8.3fms %8.3fms\n", "over gRPC (client-side)", grpc_p50 * 1e3,
              Percentile(remote, 0.99) * 1e3);
  std::printf("%-28s %8.3fms %8.3fms\n", "in-process model", local_p50 * 1e3,
              Percentile(in_process, 0.99) * 1e3);
  std::printf("%-28s %8.3fms\n", "serving overhead (p50)", (grpc_p50 - local_p50) * 1e3);
  return 0;
}

// ----------------------------------------------------------------------------------- set-up

// --streams as numbers, or false (with the bad entry printed).
bool ParseCounts(std::vector<int>* counts) {
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_streams), ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(part, &n) || n < 1) {
      std::fprintf(stderr, "tandem-bench: bad --streams entry '%s'\n", std::string(part).c_str());
      return false;
    }
    counts->push_back(n);
  }
  return true;
}

// --model_dir's shape (unknown without it), or false (with the error printed).
bool ReadModelShape(ModelShape* shape) {
  if (absl::GetFlag(FLAGS_model_dir).empty()) return true;
  absl::StatusOr<tandem::ModelDir> dir = tandem::ReadModelDir(absl::GetFlag(FLAGS_model_dir));
  if (!dir.ok()) {
    std::fprintf(stderr, "tandem-bench: %s\n", dir.status().ToString().c_str());
    return false;
  }
  shape->config = dir->llama;
  shape->known = true;
  return true;
}

void PrintModelShape(const ModelShape& shape) {
  if (!shape.known) return;
  const tandem::LlamaConfig& cfg = shape.config;
  std::printf(
      "model: dim %d, %d layers, %d heads, %d kv heads, hidden %d, vocab %d, seq %d, "
      "%.2fM parameters\n",
      cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.hidden_dim, cfg.vocab_size,
      cfg.seq_len, cfg.ParameterCount() / 1e6);
}

tandem::MatmulPeak MeasurePeak() {
  if (absl::GetFlag(FLAGS_skip_peak)) return {};
  tandem::SetComputeThreads(absl::GetFlag(FLAGS_threads));
  const tandem::MatmulPeak peak =
      tandem::MeasureMatmulPeak(absl::GetFlag(FLAGS_device), absl::GetFlag(FLAGS_peak_seconds));
  std::printf("matmul peak: %.1f GFLOP/s (fp32 %dx%dx%d, %d threads, %s)\n", peak.gflops, peak.size,
              peak.size, peak.size, peak.threads, absl::GetFlag(FLAGS_device).c_str());
  return peak;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("tandem-bench --server=HOST:PORT --model_dir=DIR --streams=1,8,32");
  absl::ParseCommandLine(argc, argv);
  std::vector<int> counts;
  if (!ParseCounts(&counts)) return 2;
  ModelShape shape;
  if (!ReadModelShape(&shape)) return 2;
  const bool overhead = absl::GetFlag(FLAGS_mode) == "overhead";
  const tandem::MatmulPeak peak = overhead ? tandem::MatmulPeak{} : MeasurePeak();
  PrintModelShape(shape);

  absl::StatusOr<tandem::client::ChannelSecurity> security = tandem::client::LoadChannelSecurity(
      {absl::GetFlag(FLAGS_tls), absl::GetFlag(FLAGS_tls_ca), absl::GetFlag(FLAGS_tls_cert),
       absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_token_file)});
  if (!security.ok()) {
    std::fprintf(stderr, "tandem-bench: %s\n", std::string(security.status().message()).c_str());
    return 2;
  }
  // Separate connections per stream would measure the kernel, not the server: one channel.
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel =
      tandem::client::OpenSecureChannel(absl::GetFlag(FLAGS_server), *security, args);
  auto stub = Inference::NewStub(channel);
  if (absl::GetFlag(FLAGS_mode) == "image") return RunImageBench(stub.get(), counts);
  if (absl::GetFlag(FLAGS_mode) == "colocate") return tandem::bench::RunColocateBench(channel);
  if (overhead) return RunOverheadBench(stub.get());
  return RunTextBench(stub.get(), counts, shape, peak);
}

// tandemd: the tandem server. Trains and serves generative models on this machine's devices over
// gRPC (tandem.v1), with Prometheus metrics over HTTP.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>

#include <cstdio>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_join.h"
#include "models/torch/device.h"
#include "models/torch/host_allocator.h"
#include "server/api/server.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "gRPC listen address HOST:PORT");
ABSL_FLAG(std::string, models_dir, "models",
          "Folder of model directories; each subfolder is a model named after it");
ABSL_FLAG(std::string, default_model, "",
          "Model served when a request names none (default: the first by name)");
ABSL_FLAG(std::string, data_dir, "data", "Folder that training datasets must live under");
ABSL_FLAG(std::string, state_dir, "state",
          "Folder for the training job database, checkpoints and trained models (empty: "
          "training disabled)");
ABSL_FLAG(int, keep_checkpoints, 3, "Newest checkpoints kept per training job");
ABSL_FLAG(int64_t, train_memory_limit_mb, 0,
          "Estimated memory a training job may need (weights, gradients, AdamW state, "
          "activations); bigger specs are refused RESOURCE_EXHAUSTED. 0: half the RAM");
ABSL_FLAG(std::string, metrics_listen, "0.0.0.0:9090",
          "HTTP address for /metrics (Prometheus text format), /healthz and /readyz; empty "
          "disables");
ABSL_FLAG(int, threads, 0, "LibTorch intra-op threads (0: all cores)");
ABSL_FLAG(int64_t, malloc_keep_mb, 1024,
          "Freed host memory (MiB) that glibc malloc keeps for reuse instead of returning it to "
          "the kernel: training frees and reallocates its activations every step (0: glibc's "
          "defaults)");
ABSL_FLAG(std::string, devices, "auto",
          "Devices to run on: auto (every CUDA device, else cpu), cpu, or cuda:0,cuda:1,...");
ABSL_FLAG(int, max_sequences, 32, "Concurrent text sequences per device (KV-cache slots)");
ABSL_FLAG(int, max_images, 16, "Images denoised at once per device (batched in one U-Net step)");
ABSL_FLAG(int, max_images_per_request, 8, "num_images limit of one request");
ABSL_FLAG(int, max_steps, 1000, "Denoising steps limit of one request");
ABSL_FLAG(int, max_pending, 256,
          "Requests in hand (running + queued) before new ones get RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_queue_per_model, 128,
          "Requests waiting for a device per model before new ones get RESOURCE_EXHAUSTED (with "
          "a retry-after-ms hint)");
ABSL_FLAG(int, prefill_token_budget, 512,
          "Prompt tokens prefilled per loop iteration; longer prompts are fed in pieces, so a "
          "long prompt stalls running streams by at most this many tokens' prefill");
ABSL_FLAG(double, train_min_share, 0.1,
          "Share of each device's time training is guaranteed when inference would take all of "
          "it (0: training only in idle time)");
ABSL_FLAG(int, train_slice_ms, 250,
          "Target time of one training chunk: jobs that leave chunk_rows unset are calibrated "
          "for it at their first start");
ABSL_FLAG(std::string, train_execution, "background",
          "Where training chunks run: background (a thread the OS and GPU deprioritise, so "
          "inference preempts it at once), normal (that thread at normal priority), inline (on "
          "the device loop between inference iterations)");
ABSL_FLAG(double, peak_flops, 0,
          "FLOP/s of one device that tandem_train_mfu_ratio divides by (e.g. 67e12 for an H100's "
          "float32); 0: the device's float32 matmul rate, measured when its first job starts");
ABSL_FLAG(bool, log_requests, true,
          "Log one line per Generate call on stderr: request id, model, final status, usage");
ABSL_FLAG(int, shutdown_grace_seconds, 30,
          "On SIGTERM, how long in-flight streams may run before they are cancelled");

// Security (README "Security").
ABSL_FLAG(std::string, auth_tokens, "",
          "Tokens file: one client per line, NAME SCOPES TOKEN (scopes inference,train,admin; "
          "TOKEN or sha256:HEX). Without it the server listens on loopback only. Re-read on "
          "SIGHUP");
ABSL_FLAG(bool, insecure_allow_remote, false,
          "Listen beyond loopback without --auth_tokens (anyone who reaches the port may "
          "generate, train and deploy)");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain: TLS on the gRPC and metrics ports (re-read on SIGHUP)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: clients must present a certificate it signed (mutual TLS; /healthz "
          "stays open)");

// Hardening (README "Security").
ABSL_FLAG(int, max_receive_message_bytes, 4 << 20,
          "Largest request message accepted (bigger: RESOURCE_EXHAUSTED)");
ABSL_FLAG(int, max_concurrent_streams, 128, "Concurrent calls per client connection");
ABSL_FLAG(int, min_ping_interval_seconds, 10,
          "Clients may send keepalive pings at most this often; more often, after "
          "--max_ping_strikes, gets the connection closed (GOAWAY)");
ABSL_FLAG(int, max_ping_strikes, 2, "Early pings tolerated before GOAWAY");
ABSL_FLAG(int, keepalive_seconds, 60,
          "The server pings idle connections this often and drops those that do not answer "
          "within 20 s (0: off)");
ABSL_FLAG(int, max_connection_idle_seconds, 300,
          "Connections without a call for this long are closed (0: never)");
ABSL_FLAG(int64_t, grpc_memory_limit_mb, 1024,
          "Memory quota of the gRPC transport (buffers of all connections); 0: unlimited");
ABSL_FLAG(int, max_request_seconds, 600,
          "A Generate call running longer ends DEADLINE_EXCEEDED (the server's deadline cap)");
ABSL_FLAG(int, max_prompt_bytes, 64 << 10, "Largest text prompt, in bytes");
ABSL_FLAG(int, max_caption_bytes, 1024,
          "Largest image prompt or negative prompt, in bytes (tokens past the text encoder's "
          "context are cut, and the response says how many)");
ABSL_FLAG(int, max_stop_strings, 8, "Stop strings per request");
ABSL_FLAG(int, max_stop_bytes, 256, "Bytes per stop string");

namespace {

// The server's options from the flags (devices resolved already).
absl::StatusOr<tandem::ServerOptions> OptionsFromFlags(const std::vector<std::string>& devices) {
  tandem::ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.models_dir = absl::GetFlag(FLAGS_models_dir);
  options.default_model = absl::GetFlag(FLAGS_default_model);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  options.keep_checkpoints = absl::GetFlag(FLAGS_keep_checkpoints);
  options.train_memory_limit_mb = absl::GetFlag(FLAGS_train_memory_limit_mb);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.devices = devices;
  options.max_sequences_per_device = absl::GetFlag(FLAGS_max_sequences);
  options.max_pending = absl::GetFlag(FLAGS_max_pending);
  options.max_images_per_device = absl::GetFlag(FLAGS_max_images);
  options.limits.max_images = absl::GetFlag(FLAGS_max_images_per_request);
  options.limits.max_steps = absl::GetFlag(FLAGS_max_steps);
  options.prefill_token_budget = absl::GetFlag(FLAGS_prefill_token_budget);
  options.max_queue_per_model = absl::GetFlag(FLAGS_max_queue_per_model);
  options.log_requests = absl::GetFlag(FLAGS_log_requests);
  options.train_min_share = absl::GetFlag(FLAGS_train_min_share);
  options.train_slice_ms = absl::GetFlag(FLAGS_train_slice_ms);
  const std::string exec = absl::GetFlag(FLAGS_train_execution);
  if (exec == "background") {
    options.train_execution = tandem::TrainExecution::kBackground;
  } else if (exec == "normal") {
    options.train_execution = tandem::TrainExecution::kNormal;
  } else if (exec == "inline") {
    options.train_execution = tandem::TrainExecution::kInline;
  } else {
    return absl::InvalidArgumentError("--train_execution must be background, normal or inline");
  }
  if (options.train_slice_ms < 1) {
    return absl::InvalidArgumentError("--train_slice_ms must be >= 1");
  }
  options.peak_flops = absl::GetFlag(FLAGS_peak_flops);
  options.on_loading = [](int port, int metrics_port) {
    std::fprintf(stderr, "tandemd: port %d answers NOT_SERVING while the models load%s\n", port,
                 metrics_port > 0
                     ? (", metrics on port " + std::to_string(metrics_port)).c_str()
                     : "");
  };
  options.auth_tokens = absl::GetFlag(FLAGS_auth_tokens);
  options.insecure_allow_remote = absl::GetFlag(FLAGS_insecure_allow_remote);
  options.tls = {absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
                 absl::GetFlag(FLAGS_tls_client_ca)};
  options.grpc.max_receive_message_bytes = absl::GetFlag(FLAGS_max_receive_message_bytes);
  options.grpc.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  options.grpc.min_ping_interval_seconds = absl::GetFlag(FLAGS_min_ping_interval_seconds);
  options.grpc.max_ping_strikes = absl::GetFlag(FLAGS_max_ping_strikes);
  options.grpc.keepalive_seconds = absl::GetFlag(FLAGS_keepalive_seconds);
  options.grpc.max_connection_idle_seconds = absl::GetFlag(FLAGS_max_connection_idle_seconds);
  options.grpc.memory_limit_mb = absl::GetFlag(FLAGS_grpc_memory_limit_mb);
  options.grpc.max_request_seconds = absl::GetFlag(FLAGS_max_request_seconds);
  options.limits.max_prompt_bytes = absl::GetFlag(FLAGS_max_prompt_bytes);
  options.limits.max_caption_bytes = absl::GetFlag(FLAGS_max_caption_bytes);
  options.limits.max_stop_strings = absl::GetFlag(FLAGS_max_stop_strings);
  options.limits.max_stop_bytes = absl::GetFlag(FLAGS_max_stop_bytes);
  return options;
}

// The start-up line: where it listens, how it is secured, on which devices.
void AnnounceServing(const tandem::Server& server, const tandem::ServerOptions& options,
                     int threads) {
  std::fprintf(stderr,
               "tandemd: serving on %s (port %d, %s%s; devices %s, %d compute threads), metrics "
               "on %s\n",
               server.listen_address().c_str(), server.port(),
               options.tls.cert.empty() ? "plaintext"
               : options.tls.client_ca.empty() ? "TLS"
                                               : "mutual TLS",
               options.auth_tokens.empty() ? ", no tokens" : ", bearer tokens",
               absl::StrJoin(options.devices, ",").c_str(), threads,
               options.metrics_listen.empty()
                   ? "(disabled)"
                   : ("port " + std::to_string(server.metrics_port())).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  // OpenMP waits with libgomp's default policy (OMP_WAIT_POLICY, read once at load, is the
  // operator's): a team spin-waits between parallel regions while the threads libgomp manages do
  // not outnumber the cores, and sleeps when they do. Each thread that waits while another
  // thread's team works releases its own team (ReleaseThreadTeam), so a job training alone or a
  // device serving alone spins like a process of its own, and the two together sleep rather than
  // fight over the cores.
  absl::SetProgramUsageMessage("tandemd --listen=HOST:PORT --models_dir=DIR [flags]");
  absl::ParseCommandLine(argc, argv);

  // Block the stop and reload signals in every thread (those created later inherit the mask);
  // the main thread waits for them with sigwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  if (absl::Status s = tandem::KeepFreedHostMemory(absl::GetFlag(FLAGS_malloc_keep_mb));
      !s.ok()) {
    std::fprintf(stderr, "tandemd: --malloc_keep_mb: %s\n", s.ToString().c_str());
    return 2;
  }
  const int threads = tandem::SetComputeThreads(absl::GetFlag(FLAGS_threads));
  absl::StatusOr<std::vector<std::string>> devices =
      tandem::ResolveDevices(absl::GetFlag(FLAGS_devices));
  if (!devices.ok()) {
    std::fprintf(stderr, "tandemd: --devices: %s\n", devices.status().ToString().c_str());
    return 2;
  }

  absl::StatusOr<tandem::ServerOptions> options = OptionsFromFlags(*devices);
  if (!options.ok()) {
    std::fprintf(stderr, "tandemd: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }

  absl::StatusOr<std::unique_ptr<tandem::Server>> server = tandem::Server::Create(*options);
  if (!server.ok()) {
    std::fprintf(stderr, "tandemd: %s\n", server.status().ToString().c_str());
    return 1;
  }
  AnnounceServing(**server, *options, threads);

  int sig = 0;
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) {
    absl::Status reloaded = (*server)->Reload();
    if (reloaded.ok()) {
      std::fprintf(stderr, "tandemd: SIGHUP: reloaded the tokens file and TLS files\n");
    } else {
      std::fprintf(stderr, "tandemd: SIGHUP: kept the previous tokens and TLS material: %s\n",
                   reloaded.ToString().c_str());
    }
  }
  std::fprintf(stderr, "tandemd: %s received, finishing in-flight streams (up to %d s)\n",
               sig == SIGTERM ? "SIGTERM" : "SIGINT",
               absl::GetFlag(FLAGS_shutdown_grace_seconds));
  (*server)->Shutdown(absl::Seconds(absl::GetFlag(FLAGS_shutdown_grace_seconds)));
  server->reset();
  std::fprintf(stderr, "tandemd: stopped\n");
  return 0;
}

// tandem-llama2c-bench: single-stream greedy decoding of a llama2.c model, tandem against run.c,
// side by side in one run. It writes a model in llama2.c's format (random weights of the given
// shape, default the 15M "stories15M" shape: dim 288, hidden 768, 6 layers, 6 heads, vocab
// 32000, seq 256) with a synthetic tokenizer.bin, imports it as `tandem import` does, and for
// each thread count decodes the same prompt for the same positions in tandem (in-process, the
// TextModel tandemd drives) and in the run.c binaries you give it, checks that both print the
// same text, and reports tokens/s, the ratio, and the share of the machine's memory read
// bandwidth (measured here) that streaming the weights once per token reaches.
//
// run.c is not part of tandem: build it yourself from llama2.c (github.com/karpathy/llama2.c),
//   gcc -Ofast -march=native run.c -lm -o run              # --run_c, used at 1 thread
//   gcc -Ofast -march=native -fopenmp run.c -lm -o runomp  # --run_c_omp, at 2 and more
// and run
//   tandem-llama2c-bench --run_c=./run --run_c_omp=./runomp --threads=1,2
// Without the binaries only tandem is measured. Token 1 (BOS) gets a zero embedding, so that its
// logit is 0 and never the argmax: run.c stops at BOS, and both must run the full length.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/memory_bandwidth.h"
#include "models/formats/llama2c.h"
#include "models/llama/llama.h"
#include "models/llama2c_model.h"
#include "models/model_dir.h"
#include "models/text/llama2c_tokenizer.h"
#include "models/torch/device.h"

ABSL_FLAG(std::string, run_c, "", "run.c built with -Ofast -march=native (1 thread)");
ABSL_FLAG(std::string, run_c_omp, "",
          "run.c built with -Ofast -march=native -fopenmp (2 and more threads)");
ABSL_FLAG(std::string, threads, "1,2", "Comma-separated thread counts");
ABSL_FLAG(int, steps, 256, "Positions decoded (run.c's -n): prompt and generated tokens");
ABSL_FLAG(std::string, prompt, "Once upon a time", "The prompt of both");
ABSL_FLAG(int, repeats, 3, "Runs per side and thread count (alternating); the median is shown");
ABSL_FLAG(std::string, work_dir, "/tmp/tandem-llama2c-bench", "Where the model files go");
ABSL_FLAG(int, dim, 288, "Model width");
ABSL_FLAG(int, hidden_dim, 768, "SwiGLU width");
ABSL_FLAG(int, layers, 6, "Layers");
ABSL_FLAG(int, heads, 6, "Attention heads");
ABSL_FLAG(int, kv_heads, 6, "Key/value heads");
ABSL_FLAG(int, vocab_size, 32000, "Vocabulary");
ABSL_FLAG(int, seq_len, 256, "Context");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the weights and the tokenizer");
ABSL_FLAG(int64_t, bandwidth_mb, 1024, "Buffer of the read-bandwidth measurement (MB)");
ABSL_FLAG(std::string, batches, "",
          "Also time batched decode in-process: comma-separated stream counts (e.g. 1,8,32)");

namespace {

using tandem::bench::Clock;
using tandem::bench::SecondsSince;

int Fail(const absl::Status& status) { return tandem::bench::Fail("tandem-llama2c-bench", status); }

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The two files, as llama2.c would have them: random weights (BOS's embedding zero) and a
// synthetic tokenizer.
struct Files {
  std::string model_bin, tokenizer_bin, model_dir;
  tandem::LlamaConfig config;
};

absl::StatusOr<Files> WriteFiles() {
  const std::string dir = absl::GetFlag(FLAGS_work_dir);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  tandem::Llama2cCheckpoint ckpt;
  tandem::Llama2cHeader& h = ckpt.header;
  h.dim = absl::GetFlag(FLAGS_dim);
  h.hidden_dim = absl::GetFlag(FLAGS_hidden_dim);
  h.n_layers = absl::GetFlag(FLAGS_layers);
  h.n_heads = absl::GetFlag(FLAGS_heads);
  h.n_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  h.vocab_size = absl::GetFlag(FLAGS_vocab_size);
  h.seq_len = absl::GetFlag(FLAGS_seq_len);
  h.shared_classifier = true;
  absl::StatusOr<tandem::LlamaConfig> config = tandem::LlamaConfigFromLlama2c(h);
  if (!config.ok()) return config.status();
  absl::StatusOr<tandem::TensorMap> weights =
      tandem::RandomLlamaWeights(*config, absl::GetFlag(FLAGS_seed));
  if (!weights.ok()) return weights.status();
  tandem::TensorData& embedding = weights->at("tok_embeddings.weight");  // [vocab, dim]
  std::memset(&embedding.bytes[tandem::kLlama2cBosId * h.dim * sizeof(float)], 0,
              h.dim * sizeof(float));
  ckpt.weights = *std::move(weights);
  absl::StatusOr<std::string> bytes = tandem::SerializeLlama2cCheckpoint(ckpt);
  if (!bytes.ok()) return bytes.status();
  Files f;
  f.model_bin = dir + "/model.bin";
  f.tokenizer_bin = dir + "/tokenizer.bin";
  f.model_dir = dir + "/tandem";
  if (absl::Status s = tandem::WriteFileAtomically(f.model_bin, *bytes); !s.ok()) return s;
  const tandem::Llama2cVocab vocab =
      tandem::SyntheticLlama2cVocab(h.vocab_size, absl::GetFlag(FLAGS_seed));
  if (absl::Status s =
          tandem::WriteFileAtomically(f.tokenizer_bin, tandem::SerializeLlama2cVocab(vocab));
      !s.ok()) {
    return s;
  }
  absl::StatusOr<tandem::Llama2cImportSummary> imported =
      tandem::ImportLlama2c(f.model_bin, f.tokenizer_bin, f.model_dir);
  if (!imported.ok()) return imported.status();
  f.config = imported->config;
  return f;
}

// What run.c prints for the ids after BOS: decode() with the previous id, then safe_printf's
// rule (a lone byte that is neither printable nor whitespace prints nothing).
std::string AsRunCPrints(const tandem::Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::string out;
  for (size_t i = 1; i < ids.size(); ++i) {
    std::string piece = tok.IdToPiece(ids[i]);
    piece = piece.substr(0, piece.find('\0'));
    if (ids[i - 1] == tandem::kLlama2cBosId && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    unsigned int byte = 0;
    if (std::sscanf(piece.c_str(), "<0x%02X>", &byte) == 1) piece = std::string(1, char(byte));
    if (piece.size() == 1 && !(std::isprint(static_cast<unsigned char>(piece[0])) ||
                               std::isspace(static_cast<unsigned char>(piece[0])))) {
      continue;
    }
    out += piece;
  }
  return out + "\n";
}

// One greedy decode in tandem: the ids (BOS first), and the decode loop's tokens/s.
struct TandemRun {
  std::vector<int32_t> ids;
  double tokens_per_s = 0;
};

absl::StatusOr<TandemRun> RunTandem(tandem::TextModel& model, const tandem::Tokenizer& tok,
                                    int steps) {
  TandemRun run;
  run.ids = {tandem::kLlama2cBosId};
  for (int32_t id : tok.Encode(absl::GetFlag(FLAGS_prompt))) run.ids.push_back(id);
  absl::StatusOr<int> slot = model.AcquireSlot();
  if (!slot.ok()) return slot.status();
  std::vector<float> logits(model.config().vocab_size);
  if (absl::Status s = model.Prefill(*slot, run.ids, logits.data()); !s.ok()) return s;
  // run.c forwards positions [0, steps), each followed by its argmax.
  int forwarded = static_cast<int>(run.ids.size());
  const auto t0 = Clock::now();
  int decoded = 0;
  while (true) {
    const int32_t next =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (next == tandem::kLlama2cBosId) break;
    run.ids.push_back(next);
    if (forwarded == steps) break;
    const int one = *slot;
    if (absl::Status s = model.Decode({&one, 1}, {&next, 1}, logits.data()); !s.ok()) return s;
    ++forwarded;
    ++decoded;
  }
  run.tokens_per_s = decoded / SecondsSince(t0);
  model.ReleaseSlot(*slot);
  return run;
}

// One run of a run.c binary: what it printed and its "achieved tok/s".
struct RunCRun {
  std::string text;
  double tokens_per_s = 0;
};

absl::StatusOr<RunCRun> RunRunC(const std::string& binary, const Files& f, int threads, int steps) {
  const std::string out_path = absl::GetFlag(FLAGS_work_dir) + "/run_c.out";
  const std::string err_path = absl::GetFlag(FLAGS_work_dir) + "/run_c.err";
  const std::string n = absl::StrCat(steps), omp = absl::StrCat(threads);
  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  const pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    ::setenv("OMP_NUM_THREADS", omp.c_str(), 1);
    const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(out, 1);
    ::dup2(err, 2);
    const char* argv[] = {
        binary.c_str(), f.model_bin.c_str(), "-z", f.tokenizer_bin.c_str(), "-t",   "0",
        "-n",           n.c_str(),           "-i", prompt.c_str(),          nullptr};
    ::execv(binary.c_str(), const_cast<char* const*>(argv));
    std::_Exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  absl::StatusOr<std::string> text = tandem::ReadFile(out_path);
  absl::StatusOr<std::string> err = tandem::ReadFile(err_path);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !text.ok() || !err.ok()) {
    return absl::InternalError(
        absl::StrCat(binary, " failed (status ", status, "): ", err.ok() ? *err : std::string()));
  }
  RunCRun run;
  run.text = *text;
  const size_t at = err->find("achieved tok/s: ");
  if (at == std::string::npos ||
      !absl::SimpleAtod(absl::StripAsciiWhitespace(err->substr(at + 16)), &run.tokens_per_s)) {
    return absl::InternalError(absl::StrCat(binary, " printed no \"achieved tok/s\": ", *err));
  }
  return run;
}

// Bytes read from the weights per decoded token: every matrix once, the classifier (the
// embedding table when tied) once, the norms; the embedding row and the KV cache are left out.
double WeightBytesPerToken(const tandem::LlamaConfig& c) {
  const double per_layer = 2.0 * c.dim * c.dim * 1.0 + 2.0 * c.dim * (c.n_kv_heads * c.head_dim()) +
                           3.0 * c.dim * c.hidden_dim + 2.0 * c.dim;
  return 4.0 * (c.n_layers * per_layer + static_cast<double>(c.vocab_size) * c.dim + c.dim);
}

// --batches: every count b decodes b sequences together (each after its own 8-token prompt)
// for `steps` steps, in-process, on every --threads count; tokens/s and the ratio to b = 1.
int BatchSweep(tandem::TextModel& model) {
  if (absl::GetFlag(FLAGS_batches).empty()) return 0;
  const int vocab = model.config().vocab_size;
  const int steps = std::min(64, model.config().seq_len - 9);
  std::printf("\nbatched decode in-process, %d steps after 8-token prompts\n", steps);
  std::printf("%-8s %8s %12s %8s\n", "threads", "streams", "tokens/s", "x_single");
  for (absl::string_view t : absl::StrSplit(absl::GetFlag(FLAGS_threads), ',')) {
    int threads = 1;
    if (!absl::SimpleAtoi(t, &threads)) return 2;
    tandem::SetComputeThreads(threads);
    double single = 0;
    for (absl::string_view bs : absl::StrSplit(absl::GetFlag(FLAGS_batches), ',')) {
      int b = 0;
      if (!absl::SimpleAtoi(bs, &b) || b < 1 || b > model.max_slots()) {
        return Fail(absl::InvalidArgumentError(absl::StrCat(
            "bad --batches entry \"", bs, "\" (the model has ", model.max_slots(), " slots)")));
      }
      std::vector<int> slots;
      std::vector<int32_t> tokens(b);
      std::vector<float> logits(static_cast<size_t>(b) * vocab);
      for (int i = 0; i < b; ++i) {
        slots.push_back(*model.AcquireSlot());
        std::vector<int32_t> prompt(8);
        for (int k = 0; k < 8; ++k) prompt[k] = 3 + (i * 31 + k * 7) % (vocab - 3);
        if (absl::Status s = model.Prefill(slots.back(), prompt, logits.data()); !s.ok()) {
          return Fail(s);
        }
      }
      const auto t0 = Clock::now();
      for (int step = 0; step < steps; ++step) {
        for (int i = 0; i < b; ++i) tokens[i] = 3 + (i + step * 13) % (vocab - 3);
        if (absl::Status s = model.Decode(slots, tokens, logits.data()); !s.ok()) return Fail(s);
      }
      const double rate = static_cast<double>(b) * steps / SecondsSince(t0);
      if (b == 1) single = rate;
      std::printf("%-8d %8d %12.1f %7.2fx\n", threads, b, rate, single > 0 ? rate / single : 0);
      for (int slot : slots) model.ReleaseSlot(slot);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Single-stream greedy decoding of a llama2.c model: tandem against run.c");
  absl::ParseCommandLine(argc, argv);
  absl::StatusOr<Files> files = WriteFiles();
  if (!files.ok()) return Fail(files.status());
  absl::StatusOr<tandem::ModelDir> dir = tandem::ReadModelDir(files->model_dir);
  if (!dir.ok()) return Fail(dir.status());
  absl::StatusOr<std::unique_ptr<tandem::Tokenizer>> tok = tandem::LoadModelTokenizer(*dir);
  if (!tok.ok()) return Fail(tok.status());
  absl::StatusOr<tandem::SafetensorsFile> weights = tandem::ReadSafetensors(dir->weights_path());
  if (!weights.ok()) return Fail(weights.status());
  absl::StatusOr<std::unique_ptr<tandem::TextModel>> model =
      tandem::CreateLlamaModel(dir->llama, weights->tensors, tandem::TextModelOptions{"cpu", 32});
  if (!model.ok()) return Fail(model.status());

  const tandem::LlamaConfig& c = dir->llama;
  const int steps = std::min(absl::GetFlag(FLAGS_steps), c.seq_len);
  const double bytes_per_token = WeightBytesPerToken(c);
  std::printf(
      "model: dim %d, hidden %d, %d layers, %d heads (%d kv), vocab %d, seq %d: "
      "%.1fM parameters, %.1f MB of weights read per token\n",
      c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len,
      c.ParameterCount() / 1e6, bytes_per_token / 1e6);
  std::printf("prompt \"%s\", %d positions, greedy; median of %d runs; files in %s\n",
              absl::GetFlag(FLAGS_prompt).c_str(), steps, absl::GetFlag(FLAGS_repeats),
              absl::GetFlag(FLAGS_work_dir).c_str());
  std::printf("%-8s %12s %12s %8s %10s %10s %10s %s\n", "threads", "run.c tok/s", "tandem tok/s",
              "ratio", "read GB/s", "run.c BW", "tandem BW", "same text");
  for (absl::string_view t : absl::StrSplit(absl::GetFlag(FLAGS_threads), ',')) {
    int threads = 0;
    if (!absl::SimpleAtoi(t, &threads) || threads < 1) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("bad --threads entry \"", t, "\"")));
    }
    tandem::SetComputeThreads(threads);
    const std::string binary =
        threads == 1 ? absl::GetFlag(FLAGS_run_c) : absl::GetFlag(FLAGS_run_c_omp);
    std::vector<double> tandem_rates, run_c_rates;
    std::string tandem_text, run_c_text;
    for (int r = 0; r < absl::GetFlag(FLAGS_repeats); ++r) {
      absl::StatusOr<TandemRun> run = RunTandem(**model, **tok, steps);
      if (!run.ok()) return Fail(run.status());
      tandem_rates.push_back(run->tokens_per_s);
      tandem_text = AsRunCPrints(**tok, run->ids);
      if (binary.empty()) continue;
      absl::StatusOr<RunCRun> ref = RunRunC(binary, *files, threads, steps);
      if (!ref.ok()) return Fail(ref.status());
      run_c_rates.push_back(ref->tokens_per_s);
      run_c_text = ref->text;
    }
    const tandem::bench::ReadBandwidth bw =
        tandem::bench::MeasureReadBandwidth(threads, absl::GetFlag(FLAGS_bandwidth_mb) << 20, 5);
    const double ours = Median(tandem_rates), theirs = Median(run_c_rates);
    const double share = bytes_per_token / 1e9 / bw.gb_per_s;
    std::printf("%-8d %12s %12.1f %8s %10.1f %10s %9.0f%% %s\n", threads,
                binary.empty() ? "-" : absl::StrCat(static_cast<int>(theirs)).c_str(), ours,
                binary.empty() ? "-" : absl::StrFormat("%.2fx", ours / theirs).c_str(), bw.gb_per_s,
                binary.empty() ? "-" : absl::StrFormat("%.0f%%", 100 * theirs * share).c_str(),
                100 * ours * share,
                binary.empty() ? "-" : (tandem_text == run_c_text ? "yes" : "NO"));
    if (!binary.empty() && tandem_text != run_c_text) {
      std::printf("  tandem: %s  run.c:  %s", tandem_text.c_str(), run_c_text.c_str());
    }
  }
  return BatchSweep(**model);
}

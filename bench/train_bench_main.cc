// tandem-train-bench: trains a model in-process (the same Trainer the server's jobs run) for a
// fixed wall-clock budget and reports throughput and the held-out quality at the end — the
// numbers behind the README's training figures (e.g. bits per byte after 10 minutes on the
// fortunes corpus). The cosine schedule is laid out over --steps; the run stops at --minutes or
// --steps, whichever comes first. --steps=0 plans the schedule from the budget exactly as a job
// with Hyperparameters.max_seconds does in tandemd (server/jobs/time_budget.h), so a recipe
// tried here is the recipe a job runs. --recipe takes a job spec file instead of the shape and
// schedule flags (resolved as tandemd resolves a submitted spec, max_seconds = --minutes, its
// eval_every honoured): the in-process twin of a job, for the rate a job alone in tandemd
// should reach.
//
//   tandem-train-bench --kind=text --dataset=data/fortunes.txt --minutes=10 --steps=0
//   tandem-train-bench --recipe=scripts/recipes/image.json --dataset=data/fashion-mnist --minutes=2
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "bench/recipe.h"
#include "models/torch/device.h"
#include "models/torch/host_allocator.h"
#include "models/model_dir.h"
#include "server/api/proto_convert.h"
#include "server/jobs/time_budget.h"
#include "server/jobs/train_spec.h"
#include "trainer/trainer.h"

ABSL_FLAG(std::string, recipe, "",
          "A job spec file (scripts/recipes/*.json): its model and hyperparameters, on --dataset, "
          "for --minutes; the kind, shape and schedule flags are then not used");
ABSL_FLAG(std::string, kind, "text", "text or image");
ABSL_FLAG(std::string, dataset, "", "Text file / folder, or Fashion-MNIST / image folder");
ABSL_FLAG(std::string, work_dir, "/tmp/tandem-train-bench", "Tokenizer and checkpoints");
ABSL_FLAG(double, minutes, 10, "Wall-clock training budget (excluding the final evaluation)");
ABSL_FLAG(int, threads, 0, "LibTorch intra-op threads (0: all cores)");
ABSL_FLAG(int64_t, malloc_keep_mb, 1024,
          "Freed host memory (MiB) glibc malloc keeps for reuse, as tandemd's flag (0: glibc's "
          "defaults)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda:N");
ABSL_FLAG(int, dim, 256, "text: width");
ABSL_FLAG(int, layers, 4, "text: layers");
ABSL_FLAG(int, heads, 8, "text: heads");
ABSL_FLAG(int, kv_heads, 4, "text: kv heads");
ABSL_FLAG(int, seq_len, 128, "text: context");
ABSL_FLAG(int, vocab_size, 1024, "text: tokenizer pieces");
ABSL_FLAG(int64_t, steps, 3000,
          "Optimizer steps of the schedule (0: planned from --minutes, as max_seconds does)");
ABSL_FLAG(int, batch_size, 16, "Sequences or images per step");
ABSL_FLAG(double, lr, 2e-3, "Peak learning rate");
ABSL_FLAG(double, min_lr, 2e-4, "Final learning rate");
ABSL_FLAG(int64_t, warmup_steps, 100, "Warmup steps");
ABSL_FLAG(double, weight_decay, 0.1, "decoupled weight decay");
ABSL_FLAG(std::string, optimizer, "adamw", "adamw, or muon (Muon for the hidden matrices)");
ABSL_FLAG(std::string, precision, "fp32",
          "text: fp32, bf16-mixed (bfloat16 matrix products) or auto (bf16-mixed where fast)");
ABSL_FLAG(int64_t, eval_every, 0, "Evaluate every N steps as well (0: only at the end)");
ABSL_FLAG(std::string, export_dir, "", "Write the trained model here");
ABSL_FLAG(std::string, sample_png, "", "image: write the final evaluation's sample grid here");
ABSL_FLAG(std::vector<std::string>, unet_widths, {}, "image: U-Net widths (default 32,64,128)");
ABSL_FLAG(std::vector<std::string>, attention_levels, {},
          "image: levels with attention (default 1,2)");

namespace {

using tandem::bench::Clock;
using tandem::bench::SecondsSince;

int Fail(const absl::Status& status) { return tandem::bench::Fail("tandem-train-bench", status); }

// The U-Net lists, when given: "--unet_widths=16,32" as {16, 32}.
void SetInts(const std::vector<std::string>& flag, std::vector<int>* out) {
  if (flag.empty()) return;
  out->clear();
  for (const std::string& v : flag) out->push_back(std::stoi(v));
}

// The job the flags describe: the LLM's shape (text), the U-Net's lists (image; the rest of the
// diffusion config at its defaults), the schedule.
absl::StatusOr<tandem::TrainOptions> OptionsFromFlags() {
  tandem::TrainOptions o;
  o.job_id = "bench";
  o.kind = absl::GetFlag(FLAGS_kind) == "image" ? tandem::ModelKind::kImage
                                                  : tandem::ModelKind::kText;
  o.dataset_path = absl::GetFlag(FLAGS_dataset);
  o.device = absl::GetFlag(FLAGS_device);
  tandem::LlamaConfig& llama = o.llama;
  llama.dim = absl::GetFlag(FLAGS_dim);
  llama.n_layers = absl::GetFlag(FLAGS_layers);
  llama.n_heads = absl::GetFlag(FLAGS_heads);
  llama.n_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  llama.seq_len = absl::GetFlag(FLAGS_seq_len);
  llama.vocab_size = absl::GetFlag(FLAGS_vocab_size);
  SetInts(absl::GetFlag(FLAGS_unet_widths), &o.diffusion.unet_widths);
  SetInts(absl::GetFlag(FLAGS_attention_levels), &o.diffusion.attention_levels);
  tandem::Hyperparams& hyper = o.hyper;
  const int64_t steps = absl::GetFlag(FLAGS_steps);
  hyper.steps = steps > 0 ? steps : tandem::kUnplannedSteps;
  hyper.batch_size = absl::GetFlag(FLAGS_batch_size);
  hyper.lr = absl::GetFlag(FLAGS_lr);
  hyper.min_lr = absl::GetFlag(FLAGS_min_lr);
  hyper.warmup_steps = absl::GetFlag(FLAGS_warmup_steps);
  hyper.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  hyper.optimizer = absl::GetFlag(FLAGS_optimizer);
  if (hyper.optimizer != tandem::kAdamW && hyper.optimizer != tandem::kMuon) {
    return absl::InvalidArgumentError("--optimizer must be adamw or muon");
  }
  hyper.precision = absl::GetFlag(FLAGS_precision);
  if (hyper.precision != tandem::kFp32 && hyper.precision != tandem::kAutoPrecision &&
      !(hyper.precision == tandem::kBf16Mixed && o.kind == tandem::ModelKind::kText)) {
    return absl::InvalidArgumentError("--precision must be fp32, auto, or bf16-mixed for text");
  }
  return o;
}

// The job a --recipe file describes, resolved as tandemd resolves a submitted spec: the dataset
// is --dataset (its folder as the data_dir), max_seconds --minutes; nothing deployed.
absl::StatusOr<tandem::TrainOptions> OptionsFromRecipe(const std::string& file) {
  tandem::JobSpec spec =
      tandem::FromProto(tandem::bench::ReadRecipeOrExit("tandem-train-bench", file));
  const std::string dataset = absl::GetFlag(FLAGS_dataset);
  const size_t slash = dataset.find_last_of('/');
  tandem::TrainSpecContext context;
  context.data_dir = slash == std::string::npos ? "." : dataset.substr(0, slash);
  spec.dataset = slash == std::string::npos ? dataset : dataset.substr(slash + 1);
  spec.deploy_as.clear();
  if (!spec.hyper) spec.hyper.emplace();
  spec.hyper->max_seconds = absl::GetFlag(FLAGS_minutes) * 60;
  spec.hyper->steps = 0;
  absl::StatusOr<tandem::TrainOptions> o = tandem::ResolveTrainSpec(&spec, context);
  if (!o.ok()) return o.status();
  o->job_id = "bench";
  o->device = absl::GetFlag(FLAGS_device);
  return o;
}

// What a timed run did.
struct RunStats {
  double trained = 0;  // seconds of training, evaluations excluded
  double items = 0;    // tokens or images trained on
  double last_loss = 0;
};

// Prints the step's line every 50 steps and evaluates every `eval_every` steps (timed apart).
void Report(tandem::Trainer& trainer, const tandem::StepMetrics& m, const RunStats& run,
            int64_t eval_every, double* eval_seconds) {
  if (m.step % 50 == 0) {
    std::printf("step %lld loss %.4f lr %.2e grad_norm %.3f  %.0f items/s\n",
                static_cast<long long>(m.step), m.loss, m.lr, m.grad_norm, run.items / run.trained);
    std::fflush(stdout);
  }
  if (eval_every > 0 && m.step % eval_every == 0) {
    const auto e0 = Clock::now();
    absl::StatusOr<tandem::EvalMetrics> e = trainer.Evaluate();
    *eval_seconds += SecondsSince(e0);
    if (e.ok()) {
      std::printf("eval step %lld loss %.4f bits/byte %.4f\n", static_cast<long long>(e->step),
                  e->loss, e->bits_per_byte);
    }
  }
}

// Micro-steps until the schedule ends or --minutes of training have passed; `planned`: the
// schedule's steps were given, else they are planned from the budget.
absl::StatusOr<RunStats> TrainForBudget(tandem::Trainer& trainer, bool planned,
                                        int64_t eval_every) {
  const double budget = absl::GetFlag(FLAGS_minutes) * 60;
  const auto start = Clock::now();
  std::optional<tandem::TimeBudget> planner;
  if (!planned) planner.emplace(budget, /*planned=*/false);
  RunStats run;
  double eval_seconds = 0;
  while (trainer.step() < trainer.total_steps() && run.trained < budget) {
    absl::StatusOr<std::optional<tandem::StepMetrics>> m = trainer.MicroStep();
    if (!m.ok()) return m.status();
    run.trained = SecondsSince(start) - eval_seconds;
    if (!m->has_value()) continue;
    run.items += (*m)->tokens + (*m)->images;
    run.last_loss = (*m)->loss;
    Report(trainer, **m, run, eval_every, &eval_seconds);
    if (!planner) continue;
    const absl::Time now = absl::Now() - absl::Seconds(eval_seconds);  // evaluations excluded
    if (auto change = planner->Observe((*m)->step, now, trainer.total_steps())) {
      trainer.SetTotalSteps(change->total_steps);
      std::printf("%s\n", change->why.c_str());
    }
  }
  return run;
}

// The final evaluation, and the sample grid and model export when asked for.
int Finish(tandem::Trainer& trainer, const RunStats& run) {
  const auto e0 = Clock::now();
  absl::StatusOr<tandem::EvalMetrics> e = trainer.Evaluate();
  const double eval_time = SecondsSince(e0);
  if (!e.ok()) return Fail(e.status());
  std::printf("trained %.1f s: %lld steps, %.0f items/s, last loss %.4f\n", run.trained,
              static_cast<long long>(trainer.step()), run.items / run.trained, run.last_loss);
  std::printf("held-out: loss %.4f, bits/byte %.4f (evaluation %.1f s)\n", e->loss,
              e->bits_per_byte, eval_time);
  if (!e->text_sample.empty()) std::printf("sample: %s\n", e->text_sample.c_str());
  const std::string png = absl::GetFlag(FLAGS_sample_png);
  if (!png.empty() && !e->image_png.empty() &&
      tandem::WriteFileAtomically(png, e->image_png).ok()) {
    std::printf("samples: %s\n", png.c_str());
  }
  const std::string out = absl::GetFlag(FLAGS_export_dir);
  if (!out.empty()) {
    absl::Status s = trainer.ExportModel(out, {"tandem-train-bench", "", trainer.step()});
    if (!s.ok()) std::fprintf(stderr, "export: %s\n", s.ToString().c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Trains in-process for a time budget; reports speed and quality");
  absl::ParseCommandLine(argc, argv);
  if (absl::Status s = tandem::KeepFreedHostMemory(absl::GetFlag(FLAGS_malloc_keep_mb));
      !s.ok()) {
    return Fail(s);
  }
  const int threads = tandem::SetComputeThreads(absl::GetFlag(FLAGS_threads));
  const std::string recipe = absl::GetFlag(FLAGS_recipe);
  absl::StatusOr<tandem::TrainOptions> resolved =
      recipe.empty() ? OptionsFromFlags() : OptionsFromRecipe(recipe);
  if (!resolved.ok()) return Fail(resolved.status());
  const tandem::TrainOptions& o = *resolved;
  const std::string work = absl::GetFlag(FLAGS_work_dir);
  const auto t0 = Clock::now();
  absl::StatusOr<std::unique_ptr<tandem::Trainer>> trainer =
      o.kind == tandem::ModelKind::kText ? tandem::CreateTextTrainer(o, work, "", nullptr)
                                         : tandem::CreateImageTrainer(o, work, "", nullptr);
  if (!trainer.ok()) return Fail(trainer.status());
  std::printf("setup %.1f s (tokenizer, data), %lld parameters, %d threads\n", SecondsSince(t0),
              static_cast<long long>((*trainer)->parameter_count()), threads);
  const bool planned = recipe.empty() && absl::GetFlag(FLAGS_steps) > 0;
  const int64_t eval_every = recipe.empty() ? absl::GetFlag(FLAGS_eval_every) : o.hyper.eval_every;
  absl::StatusOr<RunStats> run = TrainForBudget(**trainer, planned, eval_every);
  if (!run.ok()) return Fail(run.status());
  return Finish(**trainer, *run);
}

// tandem-train-bench: trains a model in-process (the same Trainer the server's jobs run) for a
// fixed wall-clock budget and reports throughput and the held-out quality at the end — the
// numbers behind the README's training figures (e.g. bits per byte after 10 minutes on the
// fortunes corpus). The cosine schedule is laid out over --steps; the run stops at --minutes or
// --steps, whichever comes first.
//
//   tandem-train-bench --kind=text --dataset=data/fortunes.txt --minutes=10 --steps=3000
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "models/torch/device.h"
#include "models/model_dir.h"
#include "trainer/trainer.h"

ABSL_FLAG(std::string, kind, "text", "text or image");
ABSL_FLAG(std::string, dataset, "", "Text file / folder, or Fashion-MNIST / image folder");
ABSL_FLAG(std::string, work_dir, "/tmp/tandem-train-bench", "Tokenizer and checkpoints");
ABSL_FLAG(double, minutes, 10, "Wall-clock training budget (excluding the final evaluation)");
ABSL_FLAG(int, threads, 0, "LibTorch intra-op threads (0: all cores)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda:N");
ABSL_FLAG(int, dim, 256, "text: width");
ABSL_FLAG(int, layers, 4, "text: layers");
ABSL_FLAG(int, heads, 8, "text: heads");
ABSL_FLAG(int, kv_heads, 4, "text: kv heads");
ABSL_FLAG(int, seq_len, 128, "text: context");
ABSL_FLAG(int, vocab_size, 1024, "text: tokenizer pieces");
ABSL_FLAG(int64_t, steps, 3000, "Optimizer steps of the schedule");
ABSL_FLAG(int, batch_size, 16, "Sequences or images per step");
ABSL_FLAG(double, lr, 2e-3, "Peak learning rate");
ABSL_FLAG(double, min_lr, 2e-4, "Final learning rate");
ABSL_FLAG(int64_t, warmup_steps, 100, "Warmup steps");
ABSL_FLAG(double, weight_decay, 0.1, "AdamW decoupled weight decay");
ABSL_FLAG(int64_t, eval_every, 0, "Evaluate every N steps as well (0: only at the end)");
ABSL_FLAG(std::string, export_dir, "", "Write the trained model here");
ABSL_FLAG(std::string, sample_png, "", "image: write the final evaluation's sample grid here");
ABSL_FLAG(std::vector<std::string>, unet_widths, {}, "image: U-Net widths (default 32,64,128)");
ABSL_FLAG(std::vector<std::string>, attention_levels, {}, "image: levels with attention (default 1,2)");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Trains in-process for a time budget; reports speed and quality");
  absl::ParseCommandLine(argc, argv);
  const int threads = tandem::SetComputeThreads(absl::GetFlag(FLAGS_threads));
  tandem::TrainOptions o;
  o.job_id = "bench";
  o.kind = absl::GetFlag(FLAGS_kind) == "image" ? tandem::ModelKind::kImage
                                                  : tandem::ModelKind::kText;
  o.dataset_path = absl::GetFlag(FLAGS_dataset);
  o.device = absl::GetFlag(FLAGS_device);
  o.llama.dim = absl::GetFlag(FLAGS_dim);
  o.llama.n_layers = absl::GetFlag(FLAGS_layers);
  o.llama.n_heads = absl::GetFlag(FLAGS_heads);
  o.llama.n_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  o.llama.seq_len = absl::GetFlag(FLAGS_seq_len);
  o.llama.vocab_size = absl::GetFlag(FLAGS_vocab_size);
  if (!absl::GetFlag(FLAGS_unet_widths).empty()) {
    o.diffusion.unet_widths.clear();
    for (const std::string& w : absl::GetFlag(FLAGS_unet_widths)) o.diffusion.unet_widths.push_back(std::stoi(w));
  }
  if (!absl::GetFlag(FLAGS_attention_levels).empty()) {
    o.diffusion.attention_levels.clear();
    for (const std::string& l : absl::GetFlag(FLAGS_attention_levels)) o.diffusion.attention_levels.push_back(std::stoi(l));
  }
  o.hyper.steps = absl::GetFlag(FLAGS_steps);
  o.hyper.batch_size = absl::GetFlag(FLAGS_batch_size);
  o.hyper.lr = absl::GetFlag(FLAGS_lr);
  o.hyper.min_lr = absl::GetFlag(FLAGS_min_lr);
  o.hyper.warmup_steps = absl::GetFlag(FLAGS_warmup_steps);
  o.hyper.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  const std::string work = absl::GetFlag(FLAGS_work_dir);
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto trainer = o.kind == tandem::ModelKind::kText
                     ? tandem::CreateTextTrainer(o, work, "", nullptr)
                     : tandem::CreateImageTrainer(o, work, "", nullptr);
  if (!trainer.ok()) {
    std::fprintf(stderr, "tandem-train-bench: %s\n", trainer.status().ToString().c_str());
    return 1;
  }
  const double setup = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("setup %.1f s (tokenizer, data), %lld parameters, %d threads\n", setup,
              static_cast<long long>((*trainer)->parameter_count()), threads);
  const double budget = absl::GetFlag(FLAGS_minutes) * 60;
  const int64_t eval_every = absl::GetFlag(FLAGS_eval_every);
  const auto start = Clock::now();
  double trained = 0, items = 0, last_loss = 0, eval_seconds = 0;
  while ((*trainer)->step() < (*trainer)->total_steps() && trained < budget) {
    auto m = (*trainer)->MicroStep();
    if (!m.ok()) {
      std::fprintf(stderr, "tandem-train-bench: %s\n", m.status().ToString().c_str());
      return 1;
    }
    trained = std::chrono::duration<double>(Clock::now() - start).count() - eval_seconds;
    if (!m->has_value()) continue;
    items += (*m)->tokens + (*m)->images;
    last_loss = (*m)->loss;
    if ((*m)->step % 50 == 0) {
      std::printf("step %lld loss %.4f lr %.2e grad_norm %.3f  %.0f items/s\n",
                  static_cast<long long>((*m)->step), (*m)->loss, (*m)->lr, (*m)->grad_norm,
                  items / trained);
      std::fflush(stdout);
    }
    if (eval_every > 0 && (*m)->step % eval_every == 0) {
      const auto e0 = Clock::now();
      auto e = (*trainer)->Evaluate();
      eval_seconds += std::chrono::duration<double>(Clock::now() - e0).count();
      if (e.ok()) {
        std::printf("eval step %lld loss %.4f bits/byte %.4f\n",
                    static_cast<long long>(e->step), e->loss, e->bits_per_byte);
      }
    }
  }
  const auto e0 = Clock::now();
  auto e = (*trainer)->Evaluate();
  const double eval_time = std::chrono::duration<double>(Clock::now() - e0).count();
  if (!e.ok()) {
    std::fprintf(stderr, "tandem-train-bench: %s\n", e.status().ToString().c_str());
    return 1;
  }
  std::printf("trained %.1f s: %lld steps, %.0f items/s, last loss %.4f\n", trained,
              static_cast<long long>((*trainer)->step()), items / trained, last_loss);
  std::printf("held-out: loss %.4f, bits/byte %.4f (evaluation %.1f s)\n", e->loss,
              e->bits_per_byte, eval_time);
  if (!e->text_sample.empty()) std::printf("sample: %s\n", e->text_sample.c_str());
  const std::string png = absl::GetFlag(FLAGS_sample_png);
  if (!png.empty() && !e->image_png.empty()) {
    if (tandem::WriteFileAtomically(png, e->image_png).ok()) std::printf("samples: %s\n", png.c_str());
  }
  const std::string out = absl::GetFlag(FLAGS_export_dir);
  if (!out.empty()) {
    auto s = (*trainer)->ExportModel(out, {"tandem-train-bench", "", (*trainer)->step()});
    if (!s.ok()) std::fprintf(stderr, "export: %s\n", s.ToString().c_str());
  }
  return 0;
}

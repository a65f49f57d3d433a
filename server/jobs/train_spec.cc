#include "server/jobs/train_spec.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "models/text/text_stream.h"
#include "trainer/data/text_dataset.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxDatasetPathBytes = 1024;

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

// True when `path` (canonical) is `root` (canonical) or inside it.
bool Within(const fs::path& root, const fs::path& path) {
  auto r = root.begin(), p = path.begin();
  for (; r != root.end(); ++r, ++p) {
    if (p == path.end() || *r != *p) return false;
  }
  return true;
}

// The dataset's name as a job gives it: a relative path without "..", of sane lengths.
absl::Status CheckDatasetName(const std::string& dataset) {
  if (dataset.empty()) return Invalid("dataset is required: a path relative to --data_dir");
  if (dataset.find('\0') != std::string::npos) return Invalid("dataset must not contain NUL");
  if (!IsValidUtf8(dataset)) return Invalid("dataset is not valid UTF-8");
  if (dataset.size() > kMaxDatasetPathBytes) {
    return Invalid(absl::StrCat("dataset is ", dataset.size(), " bytes long; at most ",
                                kMaxDatasetPathBytes));
  }
  const fs::path rel(dataset);
  if (rel.is_absolute()) {
    return Invalid(absl::StrCat("dataset \"", dataset,
                                "\" must be a path relative to --data_dir, not absolute"));
  }
  for (const auto& part : rel) {
    if (part == "..") {
      return Invalid(absl::StrCat("dataset \"", dataset, "\" must not contain \"..\""));
    }
    if (part.string().size() > 255) {
      return Invalid(absl::StrCat("dataset \"", dataset, "\" has a name over 255 bytes"));
    }
  }
  return absl::OkStatus();
}

// A dataset folder `real` (canonical, under `root`): every file in it stays under `root`, a text
// folder has a non-empty .txt file, an image folder is Fashion-MNIST or has metadata.jsonl.
absl::Status CheckDatasetFolder(const std::string& dataset, const fs::path& root,
                                const fs::path& real, bool text) {
  std::error_code ec;
  int64_t usable = 0;
  for (auto it = fs::recursive_directory_iterator(real, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    const fs::path target = fs::canonical(it->path(), ec);
    if (ec) break;
    if (!Within(root, target)) {
      return Invalid(absl::StrCat("dataset \"", dataset, "\": ",
                                  fs::relative(it->path(), root).string(),
                                  " leads outside --data_dir (through a symlink)"));
    }
    if (fs::is_regular_file(target) && fs::file_size(target, ec) > 0 &&
        (!text || it->path().extension() == ".txt")) {
      ++usable;
    }
  }
  if (ec) return Invalid(absl::StrCat("dataset \"", dataset, "\": ", ec.message()));
  if (text) {
    if (usable > 0) return absl::OkStatus();
    return Invalid(absl::StrCat("dataset folder \"", dataset, "\" has no non-empty .txt files"));
  }
  const bool mnist = fs::exists(real / "train-images-idx3-ubyte.gz") &&
                     fs::exists(real / "train-labels-idx1-ubyte.gz");
  const bool folder = fs::exists(real / "metadata.jsonl");
  if (!mnist && !folder) {
    return Invalid(absl::StrCat(
        "dataset folder \"", dataset,
        "\" is neither Fashion-MNIST ({train,t10k}-{images-idx3,labels-idx1}-ubyte.gz) nor an "
        "image folder with metadata.jsonl"));
  }
  if (folder && fs::file_size(real / "metadata.jsonl", ec) == 0) {
    return Invalid(absl::StrCat("dataset \"", dataset, "\": metadata.jsonl is empty"));
  }
  return absl::OkStatus();
}

// The dataset's absolute path, confined to data_dir; every file of a folder is checked too (a
// symlinked file inside could lead out).
absl::StatusOr<std::string> ResolveDataset(const std::string& dataset, const std::string& data_dir,
                                           bool text) {
  if (data_dir.empty()) {
    return absl::FailedPreconditionError(
        "this server has no --data_dir: training datasets must live under it");
  }
  if (absl::Status s = CheckDatasetName(dataset); !s.ok()) return s;
  std::error_code ec;
  const fs::path root = fs::canonical(data_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat("--data_dir ", data_dir, ": ", ec.message()));
  }
  const fs::path joined = root / fs::path(dataset);
  if (!fs::exists(joined, ec)) {
    return absl::NotFoundError(
        absl::StrCat("dataset \"", dataset, "\" does not exist under --data_dir"));
  }
  const fs::path real = fs::canonical(joined, ec);
  if (ec || !Within(root, real)) {
    return Invalid(absl::StrCat("dataset \"", dataset,
                                "\" leads outside --data_dir (through a symlink)"));
  }
  if (fs::is_regular_file(real)) {
    if (!text) {
      return Invalid(absl::StrCat("dataset \"", dataset, "\" is a file; an image dataset is a "
                                  "Fashion-MNIST folder or an image folder with metadata.jsonl"));
    }
    if (fs::file_size(real, ec) == 0) {
      return Invalid(absl::StrCat("dataset \"", dataset, "\" is empty"));
    }
    return real.string();
  }
  if (!fs::is_directory(real)) {
    return Invalid(absl::StrCat("dataset \"", dataset, "\" is not a file or folder"));
  }
  if (absl::Status s = CheckDatasetFolder(dataset, root, real, text); !s.ok()) return s;
  return real.string();
}

// Fills the defaults of unset (0) fields and checks every range.
absl::Status Hyper(Hyperparams* h) {
  if (!(h->max_seconds >= 0) || h->max_seconds > 30 * 86400.0) {
    return Invalid(absl::StrCat("max_seconds (", h->max_seconds, ") must be in [0, 30 days]"));
  }
  const bool budgeted = h->max_seconds > 0;
  if (budgeted && h->steps == 0) h->steps = kUnplannedSteps;
  if (h->steps <= 0 || h->steps > kUnplannedSteps) {
    return Invalid(absl::StrCat("hyperparameters.steps (", h->steps, ") must be in [1, 1e8]",
                                " (or 0 with max_seconds)"));
  }
  if (h->batch_size == 0) h->batch_size = 16;
  if (h->batch_size < 0 || h->batch_size > 4096) {
    return Invalid(absl::StrCat("batch_size (", h->batch_size, ") must be in [1, 4096]"));
  }
  if (h->chunk_rows < 0 || h->chunk_rows > h->batch_size) {
    return Invalid(absl::StrCat("chunk_rows (", h->chunk_rows, ") must be in [1, batch_size (",
                                h->batch_size, ")], or 0 to calibrate"));
  }
  if (h->grad_accum == 0) h->grad_accum = 1;
  if (h->grad_accum < 0 || h->grad_accum > 1024) {
    return Invalid(absl::StrCat("grad_accum (", h->grad_accum, ") must be in [1, 1024]"));
  }
  if (h->lr == 0) h->lr = 1e-3;
  if (!(h->lr > 0 && h->lr <= 1)) return Invalid(absl::StrCat("lr (", h->lr, ") must be in (0, 1]"));
  if (h->min_lr == 0) h->min_lr = h->lr / 10;
  if (!(h->min_lr > 0 && h->min_lr <= h->lr)) {
    return Invalid(absl::StrCat("min_lr (", h->min_lr, ") must be in (0, lr]"));
  }
  if (h->warmup_steps == 0) h->warmup_steps = std::min<int64_t>(100, h->steps / 20);
  // A time budget's steps are not known yet: evaluate at the end, checkpoint every 200 steps.
  if (budgeted && h->eval_every == 0) h->eval_every = kUnplannedSteps;
  if (budgeted && h->checkpoint_every == 0) h->checkpoint_every = 200;
  if (h->warmup_steps < 0 || h->warmup_steps >= h->steps) {
    return Invalid(absl::StrCat("warmup_steps (", h->warmup_steps, ") must be in [0, steps)"));
  }
  if (!(h->weight_decay >= 0 && h->weight_decay < 1)) {
    return Invalid(absl::StrCat("weight_decay (", h->weight_decay, ") must be in [0, 1)"));
  }
  if (h->beta1 == 0) h->beta1 = 0.9;
  if (h->beta2 == 0) h->beta2 = 0.95;
  if (!(h->beta1 > 0 && h->beta1 < 1) || !(h->beta2 > 0 && h->beta2 < 1)) {
    return Invalid("beta1 and beta2 must be in (0, 1)");
  }
  if (h->grad_clip == 0) h->grad_clip = 1.0;
  if (!(h->grad_clip > 0) || !std::isfinite(h->grad_clip)) {
    return Invalid(absl::StrCat("grad_clip (", h->grad_clip, ") must be positive"));
  }
  if (h->eval_every == 0) h->eval_every = std::max<int64_t>(1, h->steps / 10);
  if (h->checkpoint_every == 0) h->checkpoint_every = h->eval_every;
  if (h->eval_every < 0 || h->checkpoint_every < 0) {
    return Invalid("eval_every and checkpoint_every must be positive (0: the default)");
  }
  if (h->seed == 0) h->seed = 1;
  if (h->caption_dropout == 0) h->caption_dropout = 0.1;
  if (!(h->caption_dropout >= 0 && h->caption_dropout < 1)) {
    return Invalid(absl::StrCat("caption_dropout (", h->caption_dropout, ") must be in [0, 1)"));
  }
  if (!(h->ema_decay >= 0 && h->ema_decay < 1)) {
    return Invalid(absl::StrCat("ema_decay (", h->ema_decay, ") must be in [0, 1)"));
  }
  if (!(h->min_snr_gamma >= 0) || !std::isfinite(h->min_snr_gamma)) {
    return Invalid(absl::StrCat("min_snr_gamma (", h->min_snr_gamma, ") must be >= 0"));
  }
  if (!(h->dropout >= 0 && h->dropout < 1)) {
    return Invalid(absl::StrCat("dropout (", h->dropout, ") must be in [0, 1)"));
  }
  if (h->optimizer.empty()) h->optimizer = kAdamW;
  if (h->optimizer != kAdamW && h->optimizer != kMuon) {
    return Invalid(absl::StrCat("optimizer (\"", h->optimizer, "\") must be \"", kAdamW,
                                "\" or \"", kMuon, "\" (empty: \"", kAdamW, "\")"));
  }
  if (h->precision.empty()) h->precision = kFp32;
  if (h->precision != kFp32 && h->precision != kBf16Mixed && h->precision != kAutoPrecision) {
    return Invalid(absl::StrCat("precision (\"", h->precision, "\") must be \"", kFp32, "\", \"",
                                kBf16Mixed, "\" or \"", kAutoPrecision, "\" (empty: \"", kFp32,
                                "\")"));
  }
  if (h->holdout_fraction == 0) h->holdout_fraction = 0.1;
  if (!(h->holdout_fraction > 0 && h->holdout_fraction <= 0.5)) {
    return Invalid(absl::StrCat("holdout_fraction (", h->holdout_fraction, ") must be in (0, 0.5]"));
  }
  return absl::OkStatus();
}

absl::Status TextConfig(TextModelSpec* m, LlamaConfig* c) {
  if (m->vocab_size == 0) m->vocab_size = 1024;
  if (m->dim == 0) m->dim = 256;
  if (m->layers == 0) m->layers = 4;
  if (m->heads == 0) m->heads = 8;
  if (m->kv_heads == 0) m->kv_heads = m->heads;
  if (m->seq_len == 0) m->seq_len = 256;
  c->vocab_size = m->vocab_size;
  c->dim = m->dim;
  c->n_layers = m->layers;
  c->n_heads = m->heads;
  c->n_kv_heads = m->kv_heads;
  c->seq_len = m->seq_len;
  c->hidden_dim = m->hidden_dim;
  c->tie_embeddings = m->tie_embeddings;
  if (m->vocab_size < 260) {
    return Invalid(absl::StrCat("text_model.vocab_size (", m->vocab_size,
                                ") must be at least 260: 3 control pieces and 256 byte pieces "
                                "come first"));
  }
  if (m->heads > 0 && m->dim % m->heads != 0) {
    return Invalid(absl::StrCat("text_model.heads (", m->heads, ") must divide dim (", m->dim, ")"));
  }
  if (absl::Status s = c->Normalize(); !s.ok()) {
    return Invalid(absl::StrCat("text_model: ", s.message()));
  }
  return absl::OkStatus();
}

// Unset fields take DiffusionConfig's defaults; the effective config is written back so the
// stored spec says what runs.
absl::Status ImageConfig(ImageModelSpec* m, DiffusionConfig* c) {
  auto take = [](int from, int* to) {
    if (from != 0) *to = from;
  };
  take(m->image_size, &c->image_size);
  take(m->channels, &c->channels);
  if (!m->unet_widths.empty()) c->unet_widths = m->unet_widths;
  take(m->res_blocks, &c->res_blocks);
  if (!m->attention_levels.empty()) c->attention_levels = m->attention_levels;
  take(m->text_dim, &c->text_dim);
  take(m->text_layers, &c->text_layers);
  take(m->text_heads, &c->text_heads);
  take(m->text_seq_len, &c->text_seq_len);
  take(m->vocab_size, &c->vocab_size);
  take(m->diffusion_steps, &c->diffusion_steps);
  if (m->v_prediction) c->prediction = "v";
  if (absl::Status s = c->Normalize(); !s.ok()) {
    return Invalid(absl::StrCat("image_model: ", s.message()));
  }
  *m = ImageModelSpec{c->image_size,  c->channels,    c->unet_widths,  c->res_blocks,
                      c->attention_levels, c->text_dim, c->text_layers, c->text_heads,
                      c->text_seq_len, c->vocab_size, c->diffusion_steps, c->prediction == "v"};
  return absl::OkStatus();
}

// Bytes of a text dataset (a file, or a folder's .txt files).
int64_t TextDatasetBytes(const std::string& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return static_cast<int64_t>(fs::file_size(path, ec));
  int64_t total = 0;
  for (auto it = fs::recursive_directory_iterator(path, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it->is_regular_file(ec) && it->path().extension() == ".txt") {
      total += static_cast<int64_t>(it->file_size(ec));
    }
  }
  return total;
}

// What only the data shows, checked at submission when reading it is cheap.
absl::Status CheckTextData(const TrainOptions& o, const JobSpec& spec) {
  if (TextDatasetBytes(o.dataset_path) > kMaxCheckedDatasetBytes) return absl::OkStatus();
  absl::StatusOr<TextCorpus> corpus =
      LoadTextCorpus(o.dataset_path, o.hyper.holdout_fraction, o.dataset_root);
  if (!corpus.ok()) {
    return absl::Status(corpus.status().code(), absl::StrCat("dataset \"", spec.dataset, "\": ",
                                                             corpus.status().message()));
  }
  const int needed = MinimumVocabSize(*corpus);
  if (o.llama.vocab_size < needed) {
    return Invalid(absl::StrCat(
        "text_model.vocab_size (", o.llama.vocab_size, ") is too small for dataset \"",
        spec.dataset, "\": its training documents have ", needed - kTokenizerMetaPieces,
        " distinct characters, and the tokenizer needs a piece for each besides its ",
        kTokenizerMetaPieces, " control and byte pieces; use a vocab_size of at least ", needed));
  }
  return absl::OkStatus();
}

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (char ch : name) {
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.')) {
      return false;
    }
  }
  return name != "." && name != "..";
}

}  // namespace

int64_t EstimateTrainingBytes(const TrainOptions& o) {
  const double b = o.hyper.batch_size;
  double params, activations;
  if (o.kind == ModelKind::kText) {
    const LlamaConfig& c = o.llama;
    params = static_cast<double>(c.ParameterCount());
    const double t = c.seq_len, d = c.dim, h = c.hidden_dim, heads = c.n_heads;
    // Per token: saved activations of every layer (norms, q/k/v, rotary, scores and
    // probabilities, SwiGLU) plus logits, their softmax and gradient.
    activations = b * t * (c.n_layers * (12 * d + 4 * h + 2 * heads * t) + 3.0 * c.vocab_size);
  } else {
    const DiffusionConfig& c = o.diffusion;
    params = static_cast<double>(c.ParameterCount());
    activations = 0;
    for (size_t l = 0; l < c.unet_widths.size(); ++l) {
      const double side = c.image_size / std::pow(2.0, static_cast<double>(l));
      const double pixels = side * side;
      const bool attn = std::find(c.attention_levels.begin(), c.attention_levels.end(),
                                  static_cast<int>(l)) != c.attention_levels.end();
      // Encoder and decoder blocks, ~12 saved tensors each; attention maps where attended.
      double per_image = (2.0 * c.res_blocks + 1) * 12 * c.unet_widths[l] * pixels;
      if (attn) per_image += (2.0 * c.res_blocks + 1) * 2 * c.attention_heads * pixels * pixels;
      activations += b * per_image;
    }
  }
  // Weights, gradients and two AdamW moments; float32 throughout.
  return static_cast<int64_t>(4.0 * (4.0 * params + activations));
}

int64_t DefaultTrainingMemoryBudget() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return 0;
  return static_cast<int64_t>(pages) * page / 2;
}

absl::StatusOr<TrainOptions> ResolveTrainSpec(JobSpec* spec, const TrainSpecContext& ctx) {
  TrainOptions o;
  if (spec->name.empty()) spec->name = "job";
  if (spec->name.size() > 200) return Invalid("name must be at most 200 bytes");
  if (!spec->kind) return Invalid("kind must be TRAIN_KIND_TEXT or TRAIN_KIND_IMAGE");
  const bool text = *spec->kind == ModelKind::kText;
  o.kind = *spec->kind;
  if (text && spec->image_model) return Invalid("a text job takes text_model, not image_model");
  if (!text && spec->text_model) return Invalid("an image job takes image_model, not text_model");
  if (!spec->hyper) return Invalid("hyperparameters.steps is required");
  if (absl::Status s = Hyper(&*spec->hyper); !s.ok()) return s;
  if (!text && spec->hyper->dropout != 0) {
    return Invalid("dropout applies to text jobs (image jobs have caption_dropout)");
  }
  if (!text && spec->hyper->precision == kBf16Mixed) {
    return Invalid(absl::StrCat("precision \"", spec->hyper->precision,
                                "\" applies to text jobs; image jobs train in \"", kFp32, "\""));
  }
  o.hyper = *spec->hyper;

  if (!spec->init_from.empty()) {
    if (ctx.registry == nullptr) return absl::FailedPreconditionError("no model registry");
    absl::StatusOr<std::shared_ptr<const ModelEntry>> init =
        ctx.registry->Lookup(spec->init_from, o.kind);
    if (!init.ok()) return init.status();
    if ((*init)->dir.kind != o.kind) {
      return Invalid(absl::StrCat("init_from \"", spec->init_from, "\" is ",
                                  text ? "an image" : "a text", " model; this is a ",
                                  text ? "text" : "image", " job"));
    }
    if (spec->text_model || spec->image_model) {
      return Invalid("init_from reuses that model's config: leave text_model / image_model unset");
    }
    o.init_from_dir = (*init)->dir.path;
    o.llama = (*init)->dir.llama;
    o.diffusion = (*init)->dir.diffusion;
  } else if (text) {
    if (!spec->text_model) spec->text_model.emplace();
    if (absl::Status s = TextConfig(&*spec->text_model, &o.llama); !s.ok()) return s;
  } else {
    if (!spec->image_model) spec->image_model.emplace();
    if (absl::Status s = ImageConfig(&*spec->image_model, &o.diffusion); !s.ok()) return s;
  }

  if (!spec->deploy_as.empty()) {
    if (!ValidName(spec->deploy_as)) {
      return Invalid(absl::StrCat("deploy_as \"", spec->deploy_as,
                                  "\" must be 1-128 letters, digits, '-', '_' or '.'"));
    }
    if (ctx.registry) {
      absl::StatusOr<std::shared_ptr<const ModelEntry>> existing =
          ctx.registry->Lookup(spec->deploy_as, o.kind);
      if (existing.ok() && (*existing)->dir.kind != o.kind) {
        return Invalid(absl::StrCat("deploy_as \"", spec->deploy_as, "\" is already ",
                                    text ? "an image" : "a text", " model"));
      }
    }
  } else if (spec->deploy_on_improvement) {
    return Invalid("deploy_on_improvement needs deploy_as");
  }

  absl::StatusOr<std::string> dataset = ResolveDataset(spec->dataset, ctx.data_dir, text);
  if (!dataset.ok()) return dataset.status();
  o.dataset_path = *dataset;
  std::error_code ec;
  o.dataset_root = fs::canonical(ctx.data_dir, ec).string();
  if (ctx.check_dataset_content && text && spec->init_from.empty()) {
    if (absl::Status s = CheckTextData(o, *spec); !s.ok()) return s;
  }
  o.keep_checkpoints = ctx.keep_checkpoints;

  return o;
}

}  // namespace tandem

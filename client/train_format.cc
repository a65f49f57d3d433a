#include "client/train_format.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace tandem::client {
namespace {

template <typename T, typename Setter>
void SetIf(const std::optional<T>& value, Setter set) {
  if (value) set(*value);
}

std::string FormatDouble(double v) { return absl::StrFormat("%g", v); }

absl::Time FromTimestamp(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

bool HasTime(const google::protobuf::Timestamp& ts) { return ts.seconds() != 0 || ts.nanos() != 0; }

int64_t TotalSteps(const v1::TrainJob& job) {
  return job.latest().total_steps() > 0 ? job.latest().total_steps()
                                        : job.spec().hyperparameters().steps();
}

}  // namespace

// --- spec assembly ------------------------------------------------------------------------------

absl::StatusOr<v1::TrainJobSpec> ParseTrainJobSpecJson(const std::string& json,
                                                       const std::string& source) {
  v1::TrainJobSpec spec;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &spec, options);
  if (!status.ok()) {
    const auto message = status.message();
    return absl::InvalidArgumentError(
        absl::StrFormat("%s is not a tandem.v1.TrainJobSpec in protobuf JSON: %s", source,
                        std::string(message.data(), message.size())));
  }
  return spec;
}

absl::StatusOr<v1::TrainJobSpec> ReadTrainJobSpecFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const std::string why = absl::StrCat("cannot read ", path, ": ", std::strerror(errno));
    return errno == ENOENT ? absl::NotFoundError(why) : absl::PermissionDeniedError(why);
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseTrainJobSpecJson(buffer.str(), path);
}

absl::StatusOr<std::vector<int>> ParseIntList(const std::string& text, const std::string& flag,
                                              bool allow_zero) {
  std::vector<int> out;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    part = absl::StripAsciiWhitespace(part);
    int v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < 0 || (v == 0 && !allow_zero)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--%s must be a comma-separated list of %s integers; got \"%s\"", flag,
          allow_zero ? "non-negative" : "positive", text));
    }
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<v1::TrainKind> ParseTrainKind(const std::string& text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "text" || lower == "train_kind_text") return tandem::v1::TRAIN_KIND_TEXT;
  if (lower == "image" || lower == "train_kind_image") return tandem::v1::TRAIN_KIND_IMAGE;
  return absl::InvalidArgumentError(
      absl::StrFormat("--kind must be text or image; got \"%s\"", text));
}

namespace {

// The first text-model and image-model flags given (nullptr: none), by name, for the kind checks
// and their messages.
struct GivenModelFlags {
  const char* text = nullptr;
  const char* image = nullptr;
};

GivenModelFlags FirstModelFlags(const TrainSpecFlags& f) {
  const std::vector<std::pair<const char*, bool>> text_flags = {
      {"layers", f.layers.has_value()},     {"dim", f.dim.has_value()},
      {"heads", f.heads.has_value()},       {"kv_heads", f.kv_heads.has_value()},
      {"seq_len", f.seq_len.has_value()},   {"hidden_dim", f.hidden_dim.has_value()},
      {"tie_embeddings", f.tie_embeddings.has_value()}};
  const std::vector<std::pair<const char*, bool>> image_flags = {
      {"image_size", f.image_size.has_value()},
      {"channels", f.channels.has_value()},
      {"unet_widths", f.unet_widths.has_value()},
      {"res_blocks", f.res_blocks.has_value()},
      {"attention_levels", f.attention_levels.has_value()},
      {"text_dim", f.text_dim.has_value()},
      {"text_layers", f.text_layers.has_value()},
      {"text_heads", f.text_heads.has_value()},
      {"text_seq_len", f.text_seq_len.has_value()},
      {"diffusion_steps", f.diffusion_steps.has_value()},
      {"v_prediction", f.v_prediction.has_value()}};
  auto first_given = [](const std::vector<std::pair<const char*, bool>>& flags) -> const char* {
    for (const auto& [name, given] : flags) {
      if (given) return name;
    }
    return nullptr;
  };
  return {first_given(text_flags), first_given(image_flags)};
}

// The kind: --kind, else the spec's, else its model config, else the model flags given; then
// the model flags and configs must fit it.
absl::Status ResolveKind(const TrainSpecFlags& f, const GivenModelFlags& given,
                         v1::TrainJobSpec* spec) {
  if (f.kind) {
    absl::StatusOr<v1::TrainKind> kind = ParseTrainKind(*f.kind);
    if (!kind.ok()) return kind.status();
    spec->set_kind(*kind);
  }
  if (spec->kind() == tandem::v1::TRAIN_KIND_UNSPECIFIED) {
    if (spec->has_text_model()) {
      spec->set_kind(tandem::v1::TRAIN_KIND_TEXT);
    } else if (spec->has_image_model()) {
      spec->set_kind(tandem::v1::TRAIN_KIND_IMAGE);
    } else if (given.text && given.image) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "both text-model (--%s) and image-model (--%s) flags given; which is it? (--kind)",
          given.text, given.image));
    } else if (given.text) {
      spec->set_kind(tandem::v1::TRAIN_KIND_TEXT);
    } else if (given.image) {
      spec->set_kind(tandem::v1::TRAIN_KIND_IMAGE);
    }
  }
  const v1::TrainKind kind = spec->kind();
  if (kind == tandem::v1::TRAIN_KIND_TEXT && given.image) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--%s is an image-model flag, but the job's kind is text", given.image));
  }
  if (kind == tandem::v1::TRAIN_KIND_IMAGE && given.text) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--%s is a text-model flag, but the job's kind is image", given.text));
  }
  if (kind == tandem::v1::TRAIN_KIND_TEXT && spec->has_image_model()) {
    return absl::InvalidArgumentError("the job's kind is text but its spec has an image_model");
  }
  if (kind == tandem::v1::TRAIN_KIND_IMAGE && spec->has_text_model()) {
    return absl::InvalidArgumentError("the job's kind is image but its spec has a text_model");
  }
  if (f.vocab_size && kind == tandem::v1::TRAIN_KIND_UNSPECIFIED) {
    return absl::InvalidArgumentError("--vocab_size needs the job's kind (--kind=text|image)");
  }
  return absl::OkStatus();
}

void ApplyJobFlags(const TrainSpecFlags& f, v1::TrainJobSpec* spec) {
  SetIf(f.name, [&](const std::string& v) { spec->set_name(v); });
  SetIf(f.dataset, [&](const std::string& v) { spec->set_dataset(v); });
  SetIf(f.init_from, [&](const std::string& v) { spec->set_init_from(v); });
  SetIf(f.deploy_as, [&](const std::string& v) { spec->set_deploy_as(v); });
  SetIf(f.deploy_on_improvement, [&](bool v) { spec->set_deploy_on_improvement(v); });
  SetIf(f.priority, [&](int v) { spec->set_priority(v); });
}

void ApplyHyperparameterFlags(const TrainSpecFlags& f, v1::TrainJobSpec* spec) {
  const bool any_hyper = f.steps || f.batch_size || f.grad_accum || f.chunk_rows || f.max_seconds ||
                         f.ema_decay || f.min_snr_gamma || f.dropout || f.optimizer || f.precision ||
                         f.lr || f.min_lr ||
                         f.warmup_steps || f.weight_decay || f.beta1 || f.beta2 || f.grad_clip ||
                         f.eval_every || f.checkpoint_every || f.seed || f.caption_dropout ||
                         f.holdout_fraction;
  if (!any_hyper) return;
  auto* h = spec->mutable_hyperparameters();
  SetIf(f.steps, [&](int64_t v) { h->set_steps(v); });
  SetIf(f.batch_size, [&](int v) { h->set_batch_size(v); });
  SetIf(f.grad_accum, [&](int v) { h->set_grad_accum(v); });
  SetIf(f.chunk_rows, [&](int v) { h->set_chunk_rows(v); });
  SetIf(f.max_seconds, [&](double v) { h->set_max_seconds(v); });
  SetIf(f.ema_decay, [&](double v) { h->set_ema_decay(v); });
  SetIf(f.min_snr_gamma, [&](double v) { h->set_min_snr_gamma(v); });
  SetIf(f.dropout, [&](double v) { h->set_dropout(v); });
  SetIf(f.optimizer, [&](const std::string& v) { h->set_optimizer(v); });
  SetIf(f.precision, [&](const std::string& v) { h->set_precision(v); });
  SetIf(f.lr, [&](double v) { h->set_lr(v); });
  SetIf(f.min_lr, [&](double v) { h->set_min_lr(v); });
  SetIf(f.warmup_steps, [&](int64_t v) { h->set_warmup_steps(v); });
  SetIf(f.weight_decay, [&](double v) { h->set_weight_decay(v); });
  SetIf(f.beta1, [&](double v) { h->set_beta1(v); });
  SetIf(f.beta2, [&](double v) { h->set_beta2(v); });
  SetIf(f.grad_clip, [&](double v) { h->set_grad_clip(v); });
  SetIf(f.eval_every, [&](int64_t v) { h->set_eval_every(v); });
  SetIf(f.checkpoint_every, [&](int64_t v) { h->set_checkpoint_every(v); });
  SetIf(f.seed, [&](uint64_t v) { h->set_seed(v); });
  SetIf(f.caption_dropout, [&](double v) { h->set_caption_dropout(v); });
  SetIf(f.holdout_fraction, [&](double v) { h->set_holdout_fraction(v); });
}

void ApplyTextModelFlags(const TrainSpecFlags& f, v1::TrainJobSpec* spec) {
  auto* m = spec->mutable_text_model();
  SetIf(f.vocab_size, [&](int v) { m->set_vocab_size(v); });
  SetIf(f.layers, [&](int v) { m->set_layers(v); });
  SetIf(f.dim, [&](int v) { m->set_dim(v); });
  SetIf(f.heads, [&](int v) { m->set_heads(v); });
  SetIf(f.kv_heads, [&](int v) { m->set_kv_heads(v); });
  SetIf(f.seq_len, [&](int v) { m->set_seq_len(v); });
  SetIf(f.hidden_dim, [&](int v) { m->set_hidden_dim(v); });
  SetIf(f.tie_embeddings, [&](bool v) { m->set_tie_embeddings(v); });
}

absl::Status ApplyImageModelFlags(const TrainSpecFlags& f, v1::TrainJobSpec* spec) {
  auto* m = spec->mutable_image_model();
  if (f.unet_widths) {
    absl::StatusOr<std::vector<int>> widths = ParseIntList(*f.unet_widths, "unet_widths");
    if (!widths.ok()) return widths.status();
    m->clear_unet_widths();
    for (int w : *widths) m->add_unet_widths(w);
  }
  if (f.attention_levels) {
    m->clear_attention_levels();
    if (!f.attention_levels->empty()) {  // --attention_levels= : none
      absl::StatusOr<std::vector<int>> levels =
          ParseIntList(*f.attention_levels, "attention_levels", /*allow_zero=*/true);
      if (!levels.ok()) return levels.status();
      for (int l : *levels) m->add_attention_levels(l);
    }
  }
  SetIf(f.vocab_size, [&](int v) { m->set_vocab_size(v); });
  SetIf(f.image_size, [&](int v) { m->set_image_size(v); });
  SetIf(f.channels, [&](int v) { m->set_channels(v); });
  SetIf(f.res_blocks, [&](int v) { m->set_res_blocks(v); });
  SetIf(f.text_dim, [&](int v) { m->set_text_dim(v); });
  SetIf(f.text_layers, [&](int v) { m->set_text_layers(v); });
  SetIf(f.text_heads, [&](int v) { m->set_text_heads(v); });
  SetIf(f.text_seq_len, [&](int v) { m->set_text_seq_len(v); });
  SetIf(f.diffusion_steps, [&](int v) { m->set_diffusion_steps(v); });
  SetIf(f.v_prediction, [&](bool v) { m->set_v_prediction(v); });
  return absl::OkStatus();
}

}  // namespace

absl::Status ApplyTrainSpecFlags(const TrainSpecFlags& f, v1::TrainJobSpec* spec) {
  const GivenModelFlags given = FirstModelFlags(f);
  if (absl::Status s = ResolveKind(f, given, spec); !s.ok()) return s;
  ApplyJobFlags(f, spec);
  ApplyHyperparameterFlags(f, spec);
  const v1::TrainKind kind = spec->kind();
  if (kind == tandem::v1::TRAIN_KIND_TEXT && (given.text || f.vocab_size)) {
    ApplyTextModelFlags(f, spec);
  }
  if (kind == tandem::v1::TRAIN_KIND_IMAGE && (given.image || f.vocab_size)) {
    return ApplyImageModelFlags(f, spec);
  }
  return absl::OkStatus();
}

// --- names --------------------------------------------------------------------------------------

absl::StatusOr<std::vector<v1::TrainJobState>> ParseStateList(const std::string& text) {
  std::vector<v1::TrainJobState> states;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    std::string name = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(part));
    if (name == "CANCELED") name = "CANCELLED";
    v1::TrainJobState state;
    if (!tandem::v1::TrainJobState_Parse(name, &state) ||
        state == tandem::v1::TRAIN_JOB_STATE_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "unknown job state \"%s\" (states: queued, running, paused, succeeded, failed, "
          "cancelled)",
          part));
    }
    if (std::find(states.begin(), states.end(), state) == states.end()) states.push_back(state);
  }
  return states;
}

std::string StateName(v1::TrainJobState state) {
  if (state == tandem::v1::TRAIN_JOB_STATE_UNSPECIFIED) return "UNSPECIFIED";
  const std::string& name = tandem::v1::TrainJobState_Name(state);
  return name.empty() ? absl::StrCat("STATE_", static_cast<int>(state)) : name;
}

std::string KindName(v1::TrainKind kind) {
  switch (kind) {
    case tandem::v1::TRAIN_KIND_TEXT: return "text";
    case tandem::v1::TRAIN_KIND_IMAGE: return "image";
    default: return "-";
  }
}

bool IsFinalState(v1::TrainJobState state) {
  return state == tandem::v1::SUCCEEDED || state == tandem::v1::FAILED ||
         state == tandem::v1::CANCELLED;
}

// --- progress -----------------------------------------------------------------------------------

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = std::llround(seconds);
  if (s < 60) return absl::StrFormat("%ds", s);
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  if (s < 86400) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  return absl::StrFormat("%dd%02dh", s / 86400, (s % 86400) / 3600);
}

std::string FormatRate(double v, const std::string& unit) {
  if (!std::isfinite(v) || v < 0) return absl::StrCat("? ", unit);
  if (v < 10) return absl::StrFormat("%.2f %s", v, unit);
  if (v < 100) return absl::StrFormat("%.1f %s", v, unit);
  if (v < 1e3) return absl::StrFormat("%.0f %s", v, unit);
  if (v < 1e4) return absl::StrFormat("%.2fk %s", v / 1e3, unit);
  if (v < 1e6) return absl::StrFormat("%.1fk %s", v / 1e3, unit);
  return absl::StrFormat("%.2fM %s", v / 1e6, unit);
}

std::string FormatProgressLine(const v1::TrainMetrics& m, v1::TrainKind kind, int bar_width) {
  std::string line;
  const int64_t total = m.total_steps();
  if (total > 0) {
    absl::StrAppend(&line, "step ", m.step(), "/", total);
    const int64_t step = std::clamp<int64_t>(m.step(), 0, total);
    if (bar_width > 0) {
      const int filled = static_cast<int>(step * bar_width / total);
      absl::StrAppend(&line, " [", std::string(filled, '#'), std::string(bar_width - filled, '.'),
                      "]");
    }
    absl::StrAppend(&line, absl::StrFormat(" %3d%%", static_cast<int>(step * 100 / total)));
  } else {
    absl::StrAppend(&line, "step ", m.step());
  }
  absl::StrAppend(&line, kDot, absl::StrFormat("loss %.4f", m.loss()));
  absl::StrAppend(&line, kDot, absl::StrFormat("lr %.2e", m.lr()));
  const bool images = kind == tandem::v1::TRAIN_KIND_IMAGE ||
                      (kind != tandem::v1::TRAIN_KIND_TEXT && m.tokens_per_second() == 0 &&
                       m.images_per_second() > 0);
  const double rate = images ? m.images_per_second() : m.tokens_per_second();
  if (rate > 0) absl::StrAppend(&line, kDot, FormatRate(rate, images ? "img/s" : "tok/s"));
  if (m.eta_seconds() > 0 && (total == 0 || m.step() < total)) {
    absl::StrAppend(&line, kDot, "ETA ", FormatDuration(m.eta_seconds()));
  }
  return line;
}

size_t DisplayWidth(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string FitProgressLine(const v1::TrainMetrics& m, v1::TrainKind kind, int columns) {
  constexpr int kMaxBar = 20;
  constexpr int kMinBar = 5;
  const size_t room = columns > 1 ? static_cast<size_t>(columns - 1) : 0;
  const std::string bare = FormatProgressLine(m, kind, 0);
  const size_t bare_width = DisplayWidth(bare);
  if (m.total_steps() > 0 && bare_width + 3 + kMinBar <= room) {  // " [" + bar + "]"
    const int bar = static_cast<int>(std::min<size_t>(kMaxBar, room - bare_width - 3));
    return FormatProgressLine(m, kind, bar);
  }
  if (bare_width <= room) return bare;
  // Cut at a code point boundary.
  std::string out;
  size_t n = 0;
  for (size_t i = 0; i < bare.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(bare[i]);
    if ((c & 0xC0) != 0x80 && ++n > room) break;
    out.push_back(bare[i]);
  }
  return out;
}

std::string FormatEvalLine(const v1::EvalResult& e) {
  std::string line = absl::StrFormat("eval step %d: loss %.4f", e.step(), e.loss());
  if (e.bits_per_byte() > 0) {
    absl::StrAppend(&line, kDot, absl::StrFormat("%.4f bits/byte", e.bits_per_byte()));
  }
  if (e.improved()) absl::StrAppend(&line, kDot, "improved");
  return line;
}

std::string IndentSample(const std::string& text, const std::string& prefix) {
  std::string out;
  for (absl::string_view line : absl::StrSplit(absl::StripSuffix(text, "\n"), '\n')) {
    absl::StrAppend(&out, prefix, line, "\n");
  }
  return out;
}

std::string SamplePath(const std::string& dir, const std::string& job_id, int64_t step) {
  const std::string name = absl::StrFormat("%s-step%d.png", job_id, step);
  if (dir.empty()) return name;
  return absl::EndsWith(dir, "/") ? dir + name : absl::StrCat(dir, "/", name);
}

// --- jobs ---------------------------------------------------------------------------------------

std::string FormatJobTable(const std::vector<v1::TrainJob>& jobs) {
  std::vector<std::vector<std::string>> rows = {
      {"ID", "NAME", "KIND", "STATE", "STEP", "LOSS", "DEPLOYED"}};
  for (const auto& job : jobs) {
    const int64_t total = TotalSteps(job);
    rows.push_back({
        job.id(),
        job.spec().name().empty() ? "-" : job.spec().name(),
        KindName(job.spec().kind()),
        StateName(job.state()),
        total > 0 ? absl::StrCat(job.latest().step(), "/", total)
                  : absl::StrCat(job.latest().step()),
        job.latest().step() > 0 ? absl::StrFormat("%.4f", job.latest().loss()) : "-",
        job.deployed_as().empty() ? "-"
                                  : absl::StrCat(job.deployed_as(), "@", job.deployed_step()),
    });
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      if (c + 1 == row.size()) {
        absl::StrAppend(&line, row[c]);
      } else {
        absl::StrAppend(&line, row[c], std::string(widths[c] - row[c].size() + 2, ' '));
      }
    }
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::string FormatSetFields(const google::protobuf::Message& message) {
  using google::protobuf::FieldDescriptor;
  const auto* reflection = message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  std::vector<std::string> parts;
  for (const FieldDescriptor* field : fields) {
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) continue;
    auto value = [&](int i) -> std::string {
      const bool rep = field->is_repeated();
      switch (field->cpp_type()) {
        case FieldDescriptor::CPPTYPE_INT32:
          return absl::StrCat(rep ? reflection->GetRepeatedInt32(message, field, i)
                                  : reflection->GetInt32(message, field));
        case FieldDescriptor::CPPTYPE_INT64:
          return absl::StrCat(rep ? reflection->GetRepeatedInt64(message, field, i)
                                  : reflection->GetInt64(message, field));
        case FieldDescriptor::CPPTYPE_UINT32:
          return absl::StrCat(rep ? reflection->GetRepeatedUInt32(message, field, i)
                                  : reflection->GetUInt32(message, field));
        case FieldDescriptor::CPPTYPE_UINT64:
          return absl::StrCat(rep ? reflection->GetRepeatedUInt64(message, field, i)
                                  : reflection->GetUInt64(message, field));
        case FieldDescriptor::CPPTYPE_DOUBLE:
          return FormatDouble(rep ? reflection->GetRepeatedDouble(message, field, i)
                                  : reflection->GetDouble(message, field));
        case FieldDescriptor::CPPTYPE_FLOAT:
          return FormatDouble(rep ? reflection->GetRepeatedFloat(message, field, i)
                                  : reflection->GetFloat(message, field));
        case FieldDescriptor::CPPTYPE_BOOL:
          return (rep ? reflection->GetRepeatedBool(message, field, i)
                      : reflection->GetBool(message, field))
                     ? "true"
                     : "false";
        case FieldDescriptor::CPPTYPE_ENUM:
          return (rep ? reflection->GetRepeatedEnum(message, field, i)
                      : reflection->GetEnum(message, field))
              ->name();
        case FieldDescriptor::CPPTYPE_STRING: {
          const std::string s = rep ? reflection->GetRepeatedString(message, field, i)
                                    : reflection->GetString(message, field);
          if (field->type() == FieldDescriptor::TYPE_BYTES) {
            return absl::StrCat("<", s.size(), " bytes>");
          }
          return s;
        }
        default:
          return "?";
      }
    };
    std::string text;
    if (field->is_repeated()) {
      std::vector<std::string> items;
      for (int i = 0; i < reflection->FieldSize(message, field); ++i) items.push_back(value(i));
      text = absl::StrJoin(items, ",");
    } else {
      text = value(0);
    }
    parts.push_back(absl::StrCat(field->name(), " ", text));
  }
  return absl::StrJoin(parts, kDot);
}

std::string FormatJobDetails(const v1::TrainJob& job, absl::TimeZone tz) {
  const auto& spec = job.spec();
  std::string out;
  auto line = [&](const char* key, const std::string& value) {
    if (!value.empty()) absl::StrAppend(&out, absl::StrFormat("  %-11s %s\n", key, value));
  };
  auto when = [&](const google::protobuf::Timestamp& ts) {
    return absl::FormatTime("%Y-%m-%d %H:%M:%S", FromTimestamp(ts), tz);
  };
  absl::StrAppend(&out, job.id(), spec.name().empty() ? "" : "  ", spec.name(), "\n");
  std::string state = StateName(job.state());
  if (job.attempt() > 0) absl::StrAppend(&state, " (attempt ", job.attempt(), ")");
  line("state", state);
  line("error", job.error());

  std::vector<std::string> what = {KindName(spec.kind())};
  if (!spec.dataset().empty()) what.push_back(absl::StrCat("dataset ", spec.dataset()));
  if (!spec.init_from().empty()) what.push_back(absl::StrCat("from ", spec.init_from()));
  if (spec.priority() != 0) what.push_back(absl::StrCat("priority ", spec.priority()));
  line("job", absl::StrJoin(what, kDot));
  if (spec.has_text_model()) line("model", FormatSetFields(spec.text_model()));
  if (spec.has_image_model()) line("model", FormatSetFields(spec.image_model()));
  if (spec.has_hyperparameters()) line("training", FormatSetFields(spec.hyperparameters()));
  if (!spec.deploy_as().empty()) {
    line("deploy", absl::StrCat("as ", spec.deploy_as(),
                                spec.deploy_on_improvement() ? " (also on each improvement)" : ""));
  }

  std::vector<std::string> times;
  if (HasTime(job.created())) times.push_back(absl::StrCat("created ", when(job.created())));
  if (HasTime(job.started())) times.push_back(absl::StrCat("started ", when(job.started())));
  if (HasTime(job.finished())) {
    std::string finished = absl::StrCat("finished ", when(job.finished()));
    if (HasTime(job.started())) {
      absl::StrAppend(&finished, " (", FormatDuration(absl::ToDoubleSeconds(
                                           FromTimestamp(job.finished()) -
                                           FromTimestamp(job.started()))),
                      ")");
    }
    times.push_back(finished);
  }
  line("time", absl::StrJoin(times, kDot));

  if (job.latest().step() > 0 || job.latest().total_steps() > 0) {
    std::string progress = FormatProgressLine(job.latest(), spec.kind(), /*bar_width=*/0);
    if (job.latest().grad_norm() > 0) {
      absl::StrAppend(&progress, kDot, absl::StrFormat("grad_norm %.3f", job.latest().grad_norm()));
    }
    line("progress", progress);
  }
  if (job.has_best_eval()) {
    std::string eval = FormatEvalLine(job.best_eval());
    line("best eval", std::string(absl::StripPrefix(eval, "eval ")));
    if (!job.best_eval().text_sample().empty()) {
      const std::string indent = std::string(14, ' ') + "| ";  // under the values
      absl::StrAppend(&out, IndentSample(job.best_eval().text_sample(), indent));
    }
  }
  if (job.checkpoint_step() > 0) line("checkpoint", absl::StrCat("step ", job.checkpoint_step()));
  if (!job.deployed_as().empty()) {
    line("deployed", absl::StrCat(job.deployed_as(), " at step ", job.deployed_step()));
  }
  return out;
}

std::string FormatHistory(const v1::TrainJob& job) {
  std::string out = "step loss lr grad_norm\n";
  for (const auto& m : job.history()) {
    absl::StrAppend(&out, absl::StrFormat("%d %.6g %.6g %.6g\n", m.step(), m.loss(), m.lr(),
                                          m.grad_norm()));
  }
  return out;
}

}  // namespace tandem::client

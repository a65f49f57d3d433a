#include "server/jobs/job_json.h"

#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

using nlohmann::json;

// Every record's fields are listed once, in a Visit(record, f) that calls f(name, field) for
// each; writing and reading both walk it. Field types are handled by ToJ / FromJ below.
template <typename S, typename F>
void Visit(S& m, F&& f, TextModelSpec*) {
  f("vocab_size", m.vocab_size);
  f("dim", m.dim);
  f("layers", m.layers);
  f("heads", m.heads);
  f("kv_heads", m.kv_heads);
  f("seq_len", m.seq_len);
  f("hidden_dim", m.hidden_dim);
  f("tie_embeddings", m.tie_embeddings);
}

template <typename S, typename F>
void Visit(S& m, F&& f, ImageModelSpec*) {
  f("image_size", m.image_size);
  f("channels", m.channels);
  f("unet_widths", m.unet_widths);
  f("res_blocks", m.res_blocks);
  f("attention_levels", m.attention_levels);
  f("text_dim", m.text_dim);
  f("text_layers", m.text_layers);
  f("text_heads", m.text_heads);
  f("text_seq_len", m.text_seq_len);
  f("vocab_size", m.vocab_size);
  f("diffusion_steps", m.diffusion_steps);
  f("v_prediction", m.v_prediction);
}

template <typename S, typename F>
void Visit(S& h, F&& f, Hyperparams*) {
  f("steps", h.steps);
  f("batch_size", h.batch_size);
  f("grad_accum", h.grad_accum);
  f("lr", h.lr);
  f("min_lr", h.min_lr);
  f("warmup_steps", h.warmup_steps);
  f("weight_decay", h.weight_decay);
  f("beta1", h.beta1);
  f("beta2", h.beta2);
  f("grad_clip", h.grad_clip);
  f("decay_norms_and_embeddings", h.decay_norms_and_embeddings);
  f("eval_every", h.eval_every);
  f("checkpoint_every", h.checkpoint_every);
  f("seed", h.seed);
  f("caption_dropout", h.caption_dropout);
  f("holdout_fraction", h.holdout_fraction);
}

template <typename S, typename F>
void Visit(S& s, F&& f, JobSpec*) {
  f("name", s.name);
  f("kind", s.kind);
  f("dataset", s.dataset);
  f("text_model", s.text_model);
  f("image_model", s.image_model);
  f("init_from", s.init_from);
  f("hyperparameters", s.hyper);
  f("deploy_as", s.deploy_as);
  f("deploy_on_improvement", s.deploy_on_improvement);
  f("priority", s.priority);
}

template <typename S, typename F>
void Visit(S& m, F&& f, StepRecord*) {
  f("step", m.step);
  f("total_steps", m.total_steps);
  f("loss", m.loss);
  f("lr", m.lr);
  f("grad_norm", m.grad_norm);
  f("tokens_per_second", m.tokens_per_second);
  f("images_per_second", m.images_per_second);
  f("eta_seconds", m.eta_seconds);
}

// Bytes that are not text: base64 in JSON.
struct Bytes {
  std::string* bytes;
};
struct ConstBytes {
  const std::string* bytes;
};

template <typename S, typename F>
void Visit(S& e, F&& f, EvalRecord*) {
  f("step", e.step);
  f("loss", e.loss);
  f("bits_per_byte", e.bits_per_byte);
  f("text_sample", e.text_sample);
  using B = std::conditional_t<std::is_const_v<S>, ConstBytes, Bytes>;
  B png{&e.image_sample_png};
  f("image_sample_png", png);
  f("improved", e.improved);
}

// The job's own fields (spec and history are the caller's business).
template <typename S, typename F>
void VisitJobRow(S& j, F&& f) {
  f("state", j.state);
  f("error", j.error);
  f("created", j.created);
  f("started", j.started);
  f("finished", j.finished);
  f("latest", j.latest);
  f("best_eval", j.best_eval);
  f("checkpoint_step", j.checkpoint_step);
  f("deployed_as", j.deployed_as);
  f("deployed_step", j.deployed_step);
  f("attempt", j.attempt);
}

template <typename T>
constexpr bool kIsRecord =
    std::is_same_v<T, TextModelSpec> || std::is_same_v<T, ImageModelSpec> ||
    std::is_same_v<T, Hyperparams> || std::is_same_v<T, JobSpec> ||
    std::is_same_v<T, StepRecord> || std::is_same_v<T, EvalRecord>;

// --- writing -----------------------------------------------------------------------------------

template <typename T>
json ToJ(const T& v);
template <typename T>
json ToJ(const std::optional<T>& v);

template <typename T>
json ToJ(const T& v) {
  if constexpr (kIsRecord<T>) {
    json out = json::object();
    Visit(v, [&](const char* key, const auto& field) {
      json value = ToJ(field);
      if (!value.is_null()) out[key] = std::move(value);
    }, static_cast<T*>(nullptr));
    return out;
  } else if constexpr (std::is_same_v<T, ConstBytes>) {
    return v.bytes->empty() ? json() : json(absl::Base64Escape(*v.bytes));
  } else if constexpr (std::is_same_v<T, absl::Time>) {
    return v == absl::InfinitePast() ? json() : json(absl::ToUnixNanos(v));
  } else if constexpr (std::is_same_v<T, JobState>) {
    return JobStateName(v);
  } else if constexpr (std::is_same_v<T, ModelKind>) {
    return v == ModelKind::kText ? "text" : "image";
  } else {
    return json(v);
  }
}

template <typename T>
json ToJ(const std::optional<T>& v) {
  return v ? ToJ(*v) : json();
}

// --- reading -----------------------------------------------------------------------------------

// Throws json::exception for a value of the wrong type; the callers catch.
template <typename T>
void FromJ(const json& j, T* out);

template <typename T>
void FromJ(const json& j, std::optional<T>* out) {
  T v{};
  if constexpr (std::is_same_v<T, Hyperparams>) v = UnsetHyperparams();
  FromJ(j, &v);
  *out = std::move(v);
}

template <typename T>
void FromJ(const json& j, T* out) {
  if constexpr (kIsRecord<T>) {
    Visit(*out, [&](const char* key, auto& field) {
      auto it = j.find(key);
      if (it != j.end() && !it->is_null()) FromJ(*it, &field);
    }, static_cast<T*>(nullptr));
  } else if constexpr (std::is_same_v<T, Bytes>) {
    if (!absl::Base64Unescape(j.get<std::string>(), out->bytes)) {
      throw json::other_error::create(501, "bad base64", &j);
    }
  } else if constexpr (std::is_same_v<T, absl::Time>) {
    *out = absl::FromUnixNanos(j.get<int64_t>());
  } else if constexpr (std::is_same_v<T, JobState>) {
    const std::string name = j.get<std::string>();
    for (int s = 1; s <= 6; ++s) {
      if (name == JobStateName(static_cast<JobState>(s))) *out = static_cast<JobState>(s);
    }
  } else if constexpr (std::is_same_v<T, ModelKind>) {
    *out = j.get<std::string>() == "image" ? ModelKind::kImage : ModelKind::kText;
  } else {
    *out = j.get<T>();
  }
}

template <typename T>
absl::StatusOr<T> Parse(const std::string& text, const char* what,
                        void (*read)(const json&, T*)) {
  try {
    json j = json::parse(text);
    if (!j.is_object()) throw json::other_error::create(501, "not an object", &j);
    T out{};
    read(j, &out);
    return out;
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat(what, " does not parse: ", e.what()));
  }
}

void ReadJobRow(const json& j, Job* job) {
  VisitJobRow(*job, [&](const char* key, auto& field) {
    auto it = j.find(key);
    if (it != j.end() && !it->is_null()) FromJ(*it, &field);
  });
  if (auto it = j.find("id"); it != j.end()) job->id = it->get<std::string>();
  if (auto it = j.find("spec"); it != j.end()) FromJ(*it, &job->spec);
}

}  // namespace

const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kQueued: return "QUEUED";
    case JobState::kRunning: return "RUNNING";
    case JobState::kPaused: return "PAUSED";
    case JobState::kSucceeded: return "SUCCEEDED";
    case JobState::kFailed: return "FAILED";
    case JobState::kCancelled: return "CANCELLED";
  }
  return "TRAIN_JOB_STATE_UNSPECIFIED";
}

std::string JobSpecToJson(const JobSpec& spec) { return ToJ(spec).dump(); }

std::string JobToJson(const Job& job, bool row) {
  json out = json::object();
  VisitJobRow(job, [&](const char* key, const auto& field) {
    json value = ToJ(field);
    if (!value.is_null()) out[key] = std::move(value);
  });
  if (!row) {
    out["id"] = job.id;
    out["spec"] = ToJ(job.spec);
  }
  return out.dump();
}

std::string StepRecordToJson(const StepRecord& m) { return ToJ(m).dump(); }

std::string JobEventToJson(const JobEvent& e) {
  json out = json::object();
  out["time"] = ToJ(e.time);
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, JobEvent::Snapshot>) {
          out["snapshot"] = json::parse(JobToJson(v.job));
        } else if constexpr (std::is_same_v<T, JobState>) {
          out["state"] = ToJ(v);
        } else if constexpr (std::is_same_v<T, StepRecord>) {
          out["metrics"] = ToJ(v);
        } else if constexpr (std::is_same_v<T, EvalRecord>) {
          out["eval"] = ToJ(v);
        } else {
          out["log"] = v.text;
        }
      },
      e.event);
  return out.dump();
}

absl::StatusOr<JobSpec> JobSpecFromJson(const std::string& text) {
  return Parse<JobSpec>(text, "a job's spec", [](const json& j, JobSpec* s) { FromJ(j, s); });
}

absl::StatusOr<Job> JobFromJson(const std::string& text) {
  return Parse<Job>(text, "a job", &ReadJobRow);
}

absl::StatusOr<StepRecord> StepRecordFromJson(const std::string& text) {
  return Parse<StepRecord>(text, "a step's metrics",
                           [](const json& j, StepRecord* m) { FromJ(j, m); });
}

absl::StatusOr<JobEvent> JobEventFromJson(const std::string& text) {
  return Parse<JobEvent>(text, "a job event", [](const json& j, JobEvent* e) {
    if (auto it = j.find("time"); it != j.end() && !it->is_null()) FromJ(*it, &e->time);
    if (auto it = j.find("snapshot"); it != j.end()) {
      JobEvent::Snapshot s;
      ReadJobRow(*it, &s.job);
      e->event = std::move(s);
    } else if (auto it = j.find("state"); it != j.end()) {
      JobState s = JobState::kQueued;
      FromJ(*it, &s);
      e->event = s;
    } else if (auto it = j.find("metrics"); it != j.end()) {
      StepRecord m;
      FromJ(*it, &m);
      e->event = m;
    } else if (auto it = j.find("eval"); it != j.end()) {
      EvalRecord r;
      FromJ(*it, &r);
      e->event = std::move(r);
    } else {
      e->event = JobEvent::Log{j.value("log", std::string())};
    }
  });
}

}  // namespace tandem

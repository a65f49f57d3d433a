#include "server/jobs/job_json.h"

#include <optional>
#include <type_traits>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

// How the types the records hold are written: an optional as its value or null, a time as
// integer nanoseconds since the Unix epoch or null when not yet set.
namespace nlohmann {
template <typename T>
struct adl_serializer<std::optional<T>> {
  static void to_json(json& j, const std::optional<T>& v) {
    if (v) {
      j = *v;
    } else {
      j = nullptr;
    }
  }
  static void from_json(const json& j, std::optional<T>& v) {
    if (j.is_null()) {
      v.reset();
    } else {
      v = j.get<T>();
    }
  }
};
template <>
struct adl_serializer<absl::Time> {
  static void to_json(json& j, absl::Time t) {
    if (t == absl::InfinitePast()) {
      j = nullptr;
    } else {
      j = absl::ToUnixNanos(t);
    }
  }
  static void from_json(const json& j, absl::Time& t) {
    t = j.is_null() ? absl::InfinitePast() : absl::FromUnixNanos(j.get<int64_t>());
  }
};
}  // namespace nlohmann

namespace tandem {

using nlohmann::json;

// Each record's fields are named once; a key missing when reading keeps the field's default,
// unknown keys are ignored.
NLOHMANN_JSON_SERIALIZE_ENUM(JobState, {{JobState::kQueued, "QUEUED"},
                                        {JobState::kRunning, "RUNNING"},
                                        {JobState::kPaused, "PAUSED"},
                                        {JobState::kSucceeded, "SUCCEEDED"},
                                        {JobState::kFailed, "FAILED"},
                                        {JobState::kCancelled, "CANCELLED"}})
NLOHMANN_JSON_SERIALIZE_ENUM(ModelKind, {{ModelKind::kText, "text"}, {ModelKind::kImage, "image"}})
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(TextModelSpec, vocab_size, dim, layers, heads,
                                                kv_heads, seq_len, hidden_dim, tie_embeddings)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ImageModelSpec, image_size, channels, unet_widths,
                                                res_blocks, attention_levels, text_dim,
                                                text_layers, text_heads, text_seq_len, vocab_size,
                                                diffusion_steps, v_prediction)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Hyperparams, steps, batch_size, grad_accum, lr,
                                                min_lr, warmup_steps, weight_decay, beta1, beta2,
                                                grad_clip, decay_norms_and_embeddings, eval_every,
                                                checkpoint_every, seed, caption_dropout,
                                                holdout_fraction, chunk_rows, max_seconds,
                                                ema_decay, min_snr_gamma, dropout,
                                                optimizer, precision)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(JobSpec, name, kind, dataset, text_model,
                                                image_model, init_from, hyper, deploy_as,
                                                deploy_on_improvement, priority, owner)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(StepRecord, step, total_steps, loss, lr, grad_norm,
                                                tokens_per_second, images_per_second, eta_seconds)

// The sample PNG is bytes, not text: base64.
void to_json(json& j, const EvalRecord& e) {
  j = json{{"step", e.step},
           {"loss", e.loss},
           {"bits_per_byte", e.bits_per_byte},
           {"text_sample", e.text_sample},
           {"image_sample_png", absl::Base64Escape(e.image_sample_png)},
           {"improved", e.improved}};
}
void from_json(const json& j, EvalRecord& e) {
  e.step = j.value("step", e.step);
  e.loss = j.value("loss", e.loss);
  e.bits_per_byte = j.value("bits_per_byte", e.bits_per_byte);
  e.text_sample = j.value("text_sample", e.text_sample);
  if (!absl::Base64Unescape(j.value("image_sample_png", std::string()), &e.image_sample_png)) {
    throw json::other_error::create(501, "image_sample_png is not base64", &j);
  }
  e.improved = j.value("improved", e.improved);
}

// `history` is the metrics table's, never part of the job's JSON.
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Job, id, spec, state, error, created, started,
                                                finished, latest, best_eval, checkpoint_step,
                                                deployed_as, deployed_step, attempt)

void to_json(json& j, const JobEvent& e) {
  j = json{{"time", e.time}};
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, JobEvent::Snapshot>) {
          j["snapshot"] = v.job;
        } else if constexpr (std::is_same_v<T, JobState>) {
          j["state"] = v;
        } else if constexpr (std::is_same_v<T, StepRecord>) {
          j["metrics"] = v;
        } else if constexpr (std::is_same_v<T, EvalRecord>) {
          j["eval"] = v;
        } else {
          j["log"] = v.text;
        }
      },
      e.event);
}
void from_json(const json& j, JobEvent& e) {
  e.time = j.value("time", absl::InfinitePast());
  if (j.contains("snapshot")) {
    e.event = JobEvent::Snapshot{j.at("snapshot").get<Job>()};
  } else if (j.contains("state")) {
    e.event = j.at("state").get<JobState>();
  } else if (j.contains("metrics")) {
    e.event = j.at("metrics").get<StepRecord>();
  } else if (j.contains("eval")) {
    e.event = j.at("eval").get<EvalRecord>();
  } else {
    e.event = JobEvent::Log{j.value("log", std::string())};
  }
}

namespace {

// True when every number in `j` converts to the integers the records hold without overflow: a
// float beyond int64's range would be undefined behaviour read into an integer field, and means
// a damaged row anyway (no record holds such a value).
bool NumbersInRange(const json& j) {
  if (j.is_number_float()) {
    const double v = j.get<double>();
    return v > -9.2e18 && v < 9.2e18;
  }
  if (j.is_structured()) {
    for (const json& child : j) {
      if (!NumbersInRange(child)) return false;
    }
  }
  return true;
}

// DATA_LOSS naming `what` for text that is not a JSON object of the right types.
template <typename T>
absl::StatusOr<T> Parse(const std::string& text, const char* what) {
  try {
    json j = json::parse(text);
    if (!j.is_object()) return absl::DataLossError(absl::StrCat(what, " is not a JSON object"));
    if (!NumbersInRange(j)) {
      return absl::DataLossError(absl::StrCat(what, " holds a number out of range"));
    }
    return j.get<T>();
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat(what, " does not parse: ", e.what()));
  }
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

std::string JobSpecToJson(const JobSpec& spec) { return json(spec).dump(); }

std::string JobToJson(const Job& job, bool row) {
  json j = job;
  if (row) {
    j.erase("id");
    j.erase("spec");
  }
  return j.dump();
}

std::string StepRecordToJson(const StepRecord& m) { return json(m).dump(); }
std::string JobEventToJson(const JobEvent& e) { return json(e).dump(); }

absl::StatusOr<JobSpec> JobSpecFromJson(const std::string& text) {
  return Parse<JobSpec>(text, "a job's spec");
}
absl::StatusOr<Job> JobFromJson(const std::string& text) { return Parse<Job>(text, "a job"); }
absl::StatusOr<StepRecord> StepRecordFromJson(const std::string& text) {
  return Parse<StepRecord>(text, "a step's metrics");
}
absl::StatusOr<JobEvent> JobEventFromJson(const std::string& text) {
  return Parse<JobEvent>(text, "a job event");
}

}  // namespace tandem

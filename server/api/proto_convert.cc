#include "server/api/proto_convert.h"

#include <type_traits>
#include <utility>

#include "google/protobuf/util/time_util.h"

namespace tandem {
namespace {

namespace v1 = tandem::v1;
using google::protobuf::util::TimeUtil;

void SetTime(absl::Time t, google::protobuf::Timestamp* ts) {
  *ts = TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

// Hyperparameters: the same fields on both sides, listed once.
struct HyperFields {
template <typename F>
void operator()(F&& f) const {
  f(&Hyperparams::steps, &v1::Hyperparameters::steps, &v1::Hyperparameters::set_steps);
  f(&Hyperparams::batch_size, &v1::Hyperparameters::batch_size,
    &v1::Hyperparameters::set_batch_size);
  f(&Hyperparams::grad_accum, &v1::Hyperparameters::grad_accum,
    &v1::Hyperparameters::set_grad_accum);
  f(&Hyperparams::lr, &v1::Hyperparameters::lr, &v1::Hyperparameters::set_lr);
  f(&Hyperparams::min_lr, &v1::Hyperparameters::min_lr, &v1::Hyperparameters::set_min_lr);
  f(&Hyperparams::warmup_steps, &v1::Hyperparameters::warmup_steps,
    &v1::Hyperparameters::set_warmup_steps);
  f(&Hyperparams::weight_decay, &v1::Hyperparameters::weight_decay,
    &v1::Hyperparameters::set_weight_decay);
  f(&Hyperparams::beta1, &v1::Hyperparameters::beta1, &v1::Hyperparameters::set_beta1);
  f(&Hyperparams::beta2, &v1::Hyperparameters::beta2, &v1::Hyperparameters::set_beta2);
  f(&Hyperparams::grad_clip, &v1::Hyperparameters::grad_clip,
    &v1::Hyperparameters::set_grad_clip);
  f(&Hyperparams::decay_norms_and_embeddings, &v1::Hyperparameters::decay_norms_and_embeddings,
    &v1::Hyperparameters::set_decay_norms_and_embeddings);
  f(&Hyperparams::eval_every, &v1::Hyperparameters::eval_every,
    &v1::Hyperparameters::set_eval_every);
  f(&Hyperparams::checkpoint_every, &v1::Hyperparameters::checkpoint_every,
    &v1::Hyperparameters::set_checkpoint_every);
  f(&Hyperparams::seed, &v1::Hyperparameters::seed, &v1::Hyperparameters::set_seed);
  f(&Hyperparams::caption_dropout, &v1::Hyperparameters::caption_dropout,
    &v1::Hyperparameters::set_caption_dropout);
  f(&Hyperparams::holdout_fraction, &v1::Hyperparameters::holdout_fraction,
    &v1::Hyperparameters::set_holdout_fraction);
  f(&Hyperparams::chunk_rows, &v1::Hyperparameters::chunk_rows,
    &v1::Hyperparameters::set_chunk_rows);
  f(&Hyperparams::max_seconds, &v1::Hyperparameters::max_seconds,
    &v1::Hyperparameters::set_max_seconds);
  f(&Hyperparams::ema_decay, &v1::Hyperparameters::ema_decay,
    &v1::Hyperparameters::set_ema_decay);
  f(&Hyperparams::min_snr_gamma, &v1::Hyperparameters::min_snr_gamma,
    &v1::Hyperparameters::set_min_snr_gamma);
  f(&Hyperparams::dropout, &v1::Hyperparameters::dropout, &v1::Hyperparameters::set_dropout);
  using SetString = void (v1::Hyperparameters::*)(const std::string&);
  f(&Hyperparams::optimizer, &v1::Hyperparameters::optimizer,
    static_cast<SetString>(&v1::Hyperparameters::set_optimizer));
  f(&Hyperparams::precision, &v1::Hyperparameters::precision,
    static_cast<SetString>(&v1::Hyperparameters::set_precision));
}
};

struct TextModelFields {
template <typename F>
void operator()(F&& f) const {
  using P = v1::TextModelConfig;
  f(&TextModelSpec::vocab_size, &P::vocab_size, &P::set_vocab_size);
  f(&TextModelSpec::dim, &P::dim, &P::set_dim);
  f(&TextModelSpec::layers, &P::layers, &P::set_layers);
  f(&TextModelSpec::heads, &P::heads, &P::set_heads);
  f(&TextModelSpec::kv_heads, &P::kv_heads, &P::set_kv_heads);
  f(&TextModelSpec::seq_len, &P::seq_len, &P::set_seq_len);
  f(&TextModelSpec::hidden_dim, &P::hidden_dim, &P::set_hidden_dim);
  f(&TextModelSpec::tie_embeddings, &P::tie_embeddings, &P::set_tie_embeddings);
}
};

struct ImageModelScalars {
template <typename F>
void operator()(F&& f) const {
  using P = v1::ImageModelConfig;
  f(&ImageModelSpec::image_size, &P::image_size, &P::set_image_size);
  f(&ImageModelSpec::channels, &P::channels, &P::set_channels);
  f(&ImageModelSpec::res_blocks, &P::res_blocks, &P::set_res_blocks);
  f(&ImageModelSpec::text_dim, &P::text_dim, &P::set_text_dim);
  f(&ImageModelSpec::text_layers, &P::text_layers, &P::set_text_layers);
  f(&ImageModelSpec::text_heads, &P::text_heads, &P::set_text_heads);
  f(&ImageModelSpec::text_seq_len, &P::text_seq_len, &P::set_text_seq_len);
  f(&ImageModelSpec::vocab_size, &P::vocab_size, &P::set_vocab_size);
  f(&ImageModelSpec::diffusion_steps, &P::diffusion_steps, &P::set_diffusion_steps);
  f(&ImageModelSpec::v_prediction, &P::v_prediction, &P::set_v_prediction);
}
};

// Copies every field a Fields() function lists from a message into a struct, or back.
template <typename Struct, typename Message, typename Fields>
void CopyIn(const Message& from, Struct* to, Fields fields) {
  fields([&](auto member, auto get, auto) { to->*member = (from.*get)(); });
}
template <typename Struct, typename Message, typename Fields>
void CopyOut(const Struct& from, Message* to, Fields fields) {
  fields([&](auto member, auto, auto set) { (to->*set)(from.*member); });
}

v1::TrainJobState ToProto(JobState s) { return static_cast<v1::TrainJobState>(s); }

}  // namespace

std::optional<JobState> FromProto(v1::TrainJobState state) {
  const int s = static_cast<int>(state);
  if (s < static_cast<int>(JobState::kQueued) || s > static_cast<int>(JobState::kCancelled)) {
    return std::nullopt;
  }
  return static_cast<JobState>(s);
}

v1::GenerateResponse ToProto(const GenerateEvent& event) {
  v1::GenerateResponse r;
  std::visit(
      [&](const auto& e) {
        using T = std::decay_t<decltype(e)>;
        if constexpr (std::is_same_v<T, TextDelta>) {
          r.mutable_text()->set_text(e.text);
          r.mutable_text()->mutable_token_ids()->Add(e.token_ids.begin(), e.token_ids.end());
        } else if constexpr (std::is_same_v<T, ImageProgress>) {
          auto* p = r.mutable_progress();
          p->set_step(e.step);
          p->set_total(e.total);
          p->set_preview_png(e.preview_png);
        } else if constexpr (std::is_same_v<T, ImageOutput>) {
          auto* img = r.mutable_image();
          img->set_png(e.png);
          img->set_width(e.width);
          img->set_height(e.height);
          img->set_seed(e.seed);
          img->set_index(e.index);
        } else {
          auto* f = r.mutable_finished();
          f->set_reason(static_cast<v1::Finished::Reason>(e.reason));
          f->set_request_id(e.request_id);
          f->set_seed(e.seed);
          f->set_model(e.model);
          f->set_model_version(e.model_version);
          auto* u = f->mutable_usage();
          u->set_prompt_tokens(e.usage.prompt_tokens);
          u->set_completion_tokens(e.usage.completion_tokens);
          u->set_images(e.usage.images);
          u->set_steps(e.usage.steps);
          u->set_queue_seconds(e.usage.queue_seconds);
          u->set_time_to_first_token_seconds(e.usage.time_to_first_token_seconds);
          u->set_total_seconds(e.usage.total_seconds);
        }
      },
      event);
  return r;
}

JobSpec FromProto(const v1::TrainJobSpec& spec) {
  JobSpec out;
  out.name = spec.name();
  if (spec.kind() == v1::TRAIN_KIND_TEXT) out.kind = ModelKind::kText;
  if (spec.kind() == v1::TRAIN_KIND_IMAGE) out.kind = ModelKind::kImage;
  out.dataset = spec.dataset();
  if (spec.has_text_model()) CopyIn(spec.text_model(), &out.text_model.emplace(), TextModelFields{});
  if (spec.has_image_model()) {
    const v1::ImageModelConfig& m = spec.image_model();
    ImageModelSpec& image = out.image_model.emplace();
    CopyIn(m, &image, ImageModelScalars{});
    image.unet_widths.assign(m.unet_widths().begin(), m.unet_widths().end());
    image.attention_levels.assign(m.attention_levels().begin(), m.attention_levels().end());
  }
  out.init_from = spec.init_from();
  if (spec.has_hyperparameters()) {
    out.hyper = UnsetHyperparams();
    CopyIn(spec.hyperparameters(), &*out.hyper, HyperFields{});
  }
  out.deploy_as = spec.deploy_as();
  out.deploy_on_improvement = spec.deploy_on_improvement();
  out.priority = spec.priority();
  return out;
}

v1::TrainJobSpec ToProto(const JobSpec& spec) {
  v1::TrainJobSpec out;
  out.set_name(spec.name);
  if (spec.kind) {
    out.set_kind(*spec.kind == ModelKind::kText ? v1::TRAIN_KIND_TEXT : v1::TRAIN_KIND_IMAGE);
  }
  out.set_dataset(spec.dataset);
  if (spec.text_model) CopyOut(*spec.text_model, out.mutable_text_model(), TextModelFields{});
  if (spec.image_model) {
    v1::ImageModelConfig* m = out.mutable_image_model();
    CopyOut(*spec.image_model, m, ImageModelScalars{});
    m->mutable_unet_widths()->Assign(spec.image_model->unet_widths.begin(),
                                     spec.image_model->unet_widths.end());
    m->mutable_attention_levels()->Assign(spec.image_model->attention_levels.begin(),
                                          spec.image_model->attention_levels.end());
  }
  out.set_init_from(spec.init_from);
  if (spec.hyper) CopyOut(*spec.hyper, out.mutable_hyperparameters(), HyperFields{});
  out.set_deploy_as(spec.deploy_as);
  out.set_deploy_on_improvement(spec.deploy_on_improvement);
  out.set_priority(spec.priority);
  return out;
}

v1::TrainMetrics ToProto(const StepRecord& m) {
  v1::TrainMetrics out;
  out.set_step(m.step);
  out.set_total_steps(m.total_steps);
  out.set_loss(m.loss);
  out.set_lr(m.lr);
  out.set_grad_norm(m.grad_norm);
  out.set_tokens_per_second(m.tokens_per_second);
  out.set_images_per_second(m.images_per_second);
  out.set_eta_seconds(m.eta_seconds);
  return out;
}

v1::EvalResult ToProto(const EvalRecord& e) {
  v1::EvalResult out;
  out.set_step(e.step);
  out.set_loss(e.loss);
  out.set_bits_per_byte(e.bits_per_byte);
  out.set_text_sample(e.text_sample);
  out.set_image_sample_png(e.image_sample_png);
  out.set_improved(e.improved);
  return out;
}

v1::TrainJob ToProto(const Job& job) {
  v1::TrainJob out;
  out.set_id(job.id);
  *out.mutable_spec() = ToProto(job.spec);
  out.set_state(ToProto(job.state));
  out.set_error(job.error);
  if (job.created != absl::InfinitePast()) SetTime(job.created, out.mutable_created());
  if (job.started != absl::InfinitePast()) SetTime(job.started, out.mutable_started());
  if (job.finished != absl::InfinitePast()) SetTime(job.finished, out.mutable_finished());
  if (job.latest) *out.mutable_latest() = ToProto(*job.latest);
  if (job.best_eval) *out.mutable_best_eval() = ToProto(*job.best_eval);
  out.set_checkpoint_step(job.checkpoint_step);
  out.set_deployed_as(job.deployed_as);
  out.set_deployed_step(job.deployed_step);
  for (const StepRecord& m : job.history) *out.add_history() = ToProto(m);
  out.set_attempt(job.attempt);
  out.set_owner(job.spec.owner);
  return out;
}

v1::TrainJobEvent ToProto(const JobEvent& event) {
  v1::TrainJobEvent out;
  SetTime(event.time, out.mutable_time());
  std::visit(
      [&](const auto& e) {
        using T = std::decay_t<decltype(e)>;
        if constexpr (std::is_same_v<T, JobEvent::Snapshot>) {
          *out.mutable_snapshot() = ToProto(e.job);
        } else if constexpr (std::is_same_v<T, JobState>) {
          out.set_state(ToProto(e));
        } else if constexpr (std::is_same_v<T, StepRecord>) {
          *out.mutable_metrics() = ToProto(e);
        } else if constexpr (std::is_same_v<T, EvalRecord>) {
          *out.mutable_eval() = ToProto(e);
        } else {
          out.set_log(e.text);
        }
      },
      event.event);
  return out;
}

}  // namespace tandem

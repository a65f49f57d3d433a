#include "server/core/text_workload.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "models/text/text_stream.h"

namespace tandem {

struct TextWorkload::Sequence {
  Sequence(std::unique_ptr<TextRequest> r, std::shared_ptr<TextModel> m)
      : req(std::move(r)),
        model(std::move(m)),
        sampler(req->sampling),
        detok(req->model->tokenizer.get()),
        stop(req->stop) {}

  std::unique_ptr<TextRequest> req;
  std::shared_ptr<TextModel> model;  // the instance (weights version) this sequence runs on
  int slot = -1;
  int prefilled = 0;  // prompt tokens fed to the model so far
  Sampler sampler;
  IncrementalDetokenizer detok;
  StopStringFilter stop;
  int32_t next_token = -1;  // sampled, not yet fed to the model
  int generated = 0;
  std::vector<int32_t> pending_ids;  // ids of the text not yet sent
  absl::Time started, first_token, last_token;
  bool done = false;
  prometheus::Counter* generated_counter = nullptr;
  prometheus::Histogram* inter_token = nullptr;
};

TextWorkload::TextWorkload(TextWorkloadOptions options, int device_index, Metrics* metrics)
    : options_(std::move(options)), device_index_(device_index), metrics_(metrics) {
  if (metrics_) {
    const std::map<std::string, std::string> labels = {{"device", options_.device}};
    step_seconds_ = &metrics_->decode_step_seconds.Add(labels, Metrics::LatencyBuckets());
    batch_size_ = &metrics_->decode_batch_size.Add(labels, Metrics::BatchBuckets());
    prefill_seconds_ = &metrics_->prefill_seconds.Add(labels, Metrics::LatencyBuckets());
    waiting_gauges_ = GaugeSet(&metrics_->requests_waiting, "model", labels);
    running_gauges_ = GaugeSet(&metrics_->requests_running, "model", labels);
    slots_gauges_ = GaugeSet(&metrics_->kv_slots_used, "model", labels);
  }
}

TextWorkload::~TextWorkload() {
  AbortAll(absl::UnavailableError("the server is shutting down"));
}

void TextWorkload::Admit(std::unique_ptr<TextRequest> request) {
  waiting_.Push(std::move(request));
  UpdateGauges();
}

void TextWorkload::RunIteration() {
  DropCancelled();
  AdmitWaiting();
  PrefillAdmitted();
  DecodeActive();
  UpdateGauges();
}

void TextWorkload::AbortAll(const absl::Status& status) {
  waiting_.AbortAll(status);
  for (auto& seq : active_.items()) Release(*seq, status);
  prefilling_.clear();
  active_.Sweep();
  UpdateGauges();
}

void TextWorkload::DropCancelled() {
  waiting_.DropCancelled();
  for (auto& seq : active_.items()) {
    // The client is gone; the Finished event is for the log, the status ends the reactor.
    if (seq->req->stream->cancelled()) Complete(*seq, FinishReason::kCancelled);
  }
  ForgetDonePrefills();
  active_.Sweep();
}

void TextWorkload::ForgetDonePrefills() {
  prefilling_.erase(std::remove_if(prefilling_.begin(), prefilling_.end(),
                                   [](const Sequence* s) { return s->done; }),
                    prefilling_.end());
}

void TextWorkload::AdmitWaiting() {
  while (!waiting_.empty() && StartHead()) {
  }
  active_.Sweep();
}

bool TextWorkload::StartHead() {
  if (waiting_.DropCancelledFront()) return true;
  TextRequest& head = waiting_.front();
  absl::StatusOr<std::shared_ptr<TextModel>> model =
      InstanceOn<TextModel>(*head.model, device_index_);
  if (!model.ok()) {
    waiting_.FailFront(model.status());
    return true;
  }
  if ((*model)->free_slots() == 0) return false;  // the head waits; order is kept
  absl::StatusOr<int> slot = (*model)->AcquireSlot();
  if (!slot.ok()) return false;
  Sequence& seq = active_.Add(std::make_unique<Sequence>(waiting_.Pop(), *std::move(model)));
  seq.slot = *slot;
  seq.started = absl::Now();
  prefilling_.push_back(&seq);
  if (metrics_) {
    const std::map<std::string, std::string> labels = {{"model", seq.req->model->name}};
    seq.generated_counter = &metrics_->generated_tokens.Add(labels);
    seq.inter_token = &metrics_->inter_token_seconds.Add(labels, Metrics::LatencyBuckets());
    metrics_->queue_seconds.Add(labels, Metrics::LatencyBuckets())
        .Observe(absl::ToDoubleSeconds(seq.started - seq.req->accepted));
    metrics_->prompt_tokens.Add(labels).Increment(seq.req->prompt.size());
  }
  return true;
}

void TextWorkload::PrefillAdmitted() {
  // Prompts are fed in pieces of at most `budget` tokens cut at fixed offsets (so a prompt's
  // logits do not depend on what else is prefilling), oldest first, while the iteration's
  // budget lasts; the first piece of an iteration always runs.
  const int piece = options_.prefill_token_budget;
  int budget = piece;
  while (!prefilling_.empty()) {
    Sequence& seq = *prefilling_.front();
    const int remaining = static_cast<int>(seq.req->prompt.size()) - seq.prefilled;
    const int n = std::min(piece, remaining);
    if (n > budget && budget < piece) break;
    if (!PrefillPiece(seq, n)) prefilling_.pop_front();
    budget -= n;
    if (budget <= 0) break;
  }
  active_.Sweep();
}

bool TextWorkload::PrefillPiece(Sequence& seq, int n) {
  const int vocab = seq.model->config().vocab_size;
  logits_.resize(vocab);
  const absl::Span<const int32_t> tokens =
      absl::MakeConstSpan(seq.req->prompt).subspan(seq.prefilled, n);
  const absl::Time t0 = absl::Now();
  absl::Status s = seq.model->Prefill(seq.slot, tokens, logits_.data());
  if (prefill_seconds_) prefill_seconds_->Observe(absl::ToDoubleSeconds(absl::Now() - t0));
  seq.prefilled += n;
  if (!s.ok()) {
    Release(seq, s);
    return false;
  }
  if (seq.prefilled < static_cast<int>(seq.req->prompt.size())) return true;
  Emit(seq, seq.sampler.Sample(logits_.data(), vocab));
  return false;
}

void TextWorkload::DecodeActive() {
  for (auto& [model, all] : active_.ByInstance<TextModel>()) {
    std::vector<Sequence*> seqs;  // those with a token to feed (prefilled, not done)
    for (Sequence* s : all) {
      if (!s->done && s->generated > 0) seqs.push_back(s);
    }
    if (seqs.empty()) continue;
    const int vocab = model->config().vocab_size;
    std::vector<int> slots;
    std::vector<int32_t> tokens;
    slots.reserve(seqs.size());
    tokens.reserve(seqs.size());
    for (Sequence* s : seqs) {
      slots.push_back(s->slot);
      tokens.push_back(s->next_token);
    }
    logits_.resize(seqs.size() * static_cast<size_t>(vocab));
    const absl::Time t0 = absl::Now();
    absl::Status status = model->Decode(slots, tokens, logits_.data());
    if (step_seconds_) {
      step_seconds_->Observe(absl::ToDoubleSeconds(absl::Now() - t0));
      batch_size_->Observe(static_cast<double>(seqs.size()));
    }
    for (size_t i = 0; i < seqs.size(); ++i) {
      Sequence& seq = *seqs[i];
      if (!status.ok()) {
        Release(seq, status);
        continue;
      }
      Emit(seq, seq.sampler.Sample(logits_.data() + i * vocab, vocab));
    }
  }
  active_.Sweep();
}

bool TextWorkload::Emit(Sequence& seq, int32_t token) {
  const absl::Time now = absl::Now();
  if (seq.generated == 0) {
    seq.first_token = now;
    if (metrics_) {
      metrics_->ttft_seconds.Add({{"model", seq.req->model->name}}, Metrics::LatencyBuckets())
          .Observe(absl::ToDoubleSeconds(now - seq.req->accepted));
    }
  } else if (seq.inter_token) {
    seq.inter_token->Observe(absl::ToDoubleSeconds(now - seq.last_token));
  }
  seq.last_token = now;
  ++seq.generated;
  if (seq.generated_counter) seq.generated_counter->Increment();
  const LlamaConfig& cfg = seq.model->config();
  if (token == cfg.eos_id) {
    Complete(seq, FinishReason::kEos);
    return false;
  }
  seq.next_token = token;
  seq.pending_ids.push_back(token);
  bool stopped = false;
  std::string text = seq.stop.Push(seq.detok.Push(token), &stopped);
  if (stopped) {
    SendDelta(seq, std::move(text));
    Complete(seq, FinishReason::kStop);
    return false;
  }
  // Feeding this token needs one more position; the budget was checked at admission, the
  // context check guards models whose tokenizer ends early.
  const bool length = seq.generated >= seq.req->max_tokens ||
                      seq.model->SlotLength(seq.slot) >= cfg.seq_len;
  if (!text.empty() || (seq.req->include_token_ids && !length)) SendDelta(seq, std::move(text));
  if (length) {
    Complete(seq, FinishReason::kLength);
    return false;
  }
  return true;
}

void TextWorkload::SendDelta(Sequence& seq, std::string text) {
  TextDelta delta;
  delta.text = std::move(text);
  if (seq.req->include_token_ids) delta.token_ids = std::move(seq.pending_ids);
  seq.pending_ids.clear();
  seq.req->stream->Send(std::move(delta));
}

void TextWorkload::Complete(Sequence& seq, FinishReason reason) {
  if (seq.done) return;
  if (reason != FinishReason::kCancelled) {
    // Whatever the detokenizer and the stop filter still hold belongs to the completion.
    bool stopped = seq.stop.stopped();
    std::string tail;
    if (!stopped) {
      tail = seq.stop.Push(seq.detok.Flush(), &stopped);
      if (!stopped) tail += seq.stop.Flush();
    }
    if (!tail.empty() || (seq.req->include_token_ids && !seq.pending_ids.empty())) {
      SendDelta(seq, std::move(tail));
    }
  }
  const absl::Time end = absl::Now();
  Finished f;
  f.reason = reason;
  f.request_id = seq.req->id;
  f.seed = seq.req->sampling.seed;
  f.model = seq.req->model->name;
  f.model_version = seq.req->model->version;
  f.usage.prompt_tokens = static_cast<int>(seq.req->prompt.size());
  f.usage.completion_tokens = seq.generated;
  f.usage.queue_seconds = absl::ToDoubleSeconds(seq.started - seq.req->accepted);
  if (seq.generated > 0) {
    f.usage.time_to_first_token_seconds =
        absl::ToDoubleSeconds(seq.first_token - seq.req->accepted);
  }
  f.usage.total_seconds = absl::ToDoubleSeconds(end - seq.req->accepted);
  seq.req->stream->Send(std::move(f));
  if (metrics_) {
    metrics_->request_seconds.Add({{"model", seq.req->model->name}}, Metrics::LatencyBuckets())
        .Observe(absl::ToDoubleSeconds(end - seq.req->accepted));
  }
  Release(seq, reason == FinishReason::kCancelled
                   ? absl::CancelledError("the request was cancelled")
                   : absl::OkStatus());
}

void TextWorkload::Release(Sequence& seq, const absl::Status& status) {
  if (seq.slot >= 0) {
    seq.model->ReleaseSlot(seq.slot);
    seq.slot = -1;
  }
  seq.done = true;
  seq.req->End(status);
}

void TextWorkload::UpdateGauges() {
  if (!metrics_) return;
  waiting_gauges_.Set(waiting_.CountByModel());
  running_gauges_.Set(active_.CountByModel([](const Sequence&) { return 1; }));
  slots_gauges_.Set(active_.CountByModel([](const Sequence& s) { return s.slot >= 0 ? 1 : 0; }));
}

}  // namespace tandem

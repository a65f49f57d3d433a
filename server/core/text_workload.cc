#include "server/core/text_workload.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "models/text/text_stream.h"

namespace tandem {

using tandem::v1::Finished;
using tandem::v1::GenerateResponse;

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

TextWorkload::TextWorkload(TextWorkloadOptions options, ModelInstanceFn instances,
                           Metrics* metrics)
    : options_(std::move(options)), instances_(std::move(instances)), metrics_(metrics) {
  if (metrics_) {
    const std::map<std::string, std::string> labels = {{"device", options_.device}};
    step_seconds_ = &metrics_->decode_step_seconds.Add(labels, Metrics::LatencyBuckets());
    batch_size_ = &metrics_->decode_batch_size.Add(labels, Metrics::BatchBuckets());
    prefill_seconds_ = &metrics_->prefill_seconds.Add(labels, Metrics::LatencyBuckets());
    active_gauge_ = &metrics_->active_sequences.Add(labels);
    waiting_gauge_ = &metrics_->waiting_requests.Add(labels);
  }
}

TextWorkload::~TextWorkload() {
  AbortAll(absl::UnavailableError("the server is shutting down"));
}

void TextWorkload::Admit(std::unique_ptr<TextRequest> request) {
  // Stable insert: higher priority first, arrival order within a priority.
  auto it = std::find_if(waiting_.begin(), waiting_.end(), [&](const auto& w) {
    return w->priority < request->priority;
  });
  waiting_.insert(it, std::move(request));
  UpdateGauges();
}

void TextWorkload::RunIteration() {
  DropCancelled();
  AdmitWaiting();
  DecodeActive();
  UpdateGauges();
}

void TextWorkload::AbortAll(const absl::Status& status) {
  while (!waiting_.empty()) {
    auto req = std::move(waiting_.front());
    waiting_.pop_front();
    FailWaiting(std::move(req), status);
  }
  for (auto& seq : active_) {
    seq->req->stream->Finish(status);
    Release(*seq);
  }
  active_.clear();
  UpdateGauges();
}

void TextWorkload::FailWaiting(std::unique_ptr<TextRequest> request,
                               const absl::Status& status) {
  request->stream->Finish(status);
  if (request->on_done) request->on_done();
}

void TextWorkload::DropCancelled() {
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if ((*it)->stream->cancelled()) {
      FailWaiting(std::move(*it), absl::CancelledError("cancelled before it started"));
      it = waiting_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& seq : active_) {
    if (seq->req->stream->cancelled()) {
      // The client is gone; the Finished event is for the log, the status ends the reactor.
      Complete(*seq, Finished::CANCELLED);
    }
  }
  active_.erase(std::remove_if(active_.begin(), active_.end(),
                               [](const auto& s) { return s->done; }),
                active_.end());
}

void TextWorkload::AdmitWaiting() {
  int budget = options_.prefill_token_budget;
  bool first = true;
  while (!waiting_.empty()) {
    TextRequest& head = *waiting_.front();
    if (!first && static_cast<int>(head.prompt.size()) > budget) break;
    absl::StatusOr<std::shared_ptr<TextModel>> model = instances_(*head.model);
    if (!model.ok()) {
      auto req = std::move(waiting_.front());
      waiting_.pop_front();
      FailWaiting(std::move(req), model.status());
      continue;
    }
    if ((*model)->free_slots() == 0) break;  // the head waits; order is kept
    absl::StatusOr<int> slot = (*model)->AcquireSlot();
    if (!slot.ok()) break;
    auto seq = std::make_unique<Sequence>(std::move(waiting_.front()), *std::move(model));
    waiting_.pop_front();
    seq->slot = *slot;
    seq->started = absl::Now();
    const std::string& name = seq->req->model->name;
    if (metrics_) {
      const std::map<std::string, std::string> labels = {{"model", name}};
      seq->generated_counter = &metrics_->generated_tokens.Add(labels);
      seq->inter_token = &metrics_->inter_token_seconds.Add(labels, Metrics::LatencyBuckets());
      metrics_->queue_seconds.Add(labels, Metrics::LatencyBuckets())
          .Observe(absl::ToDoubleSeconds(seq->started - seq->req->accepted));
      metrics_->prompt_tokens.Add(labels).Increment(seq->req->prompt.size());
    }
    const int vocab = seq->model->config().vocab_size;
    logits_.resize(vocab);
    absl::Time t0 = absl::Now();
    absl::Status s = seq->model->Prefill(seq->slot, seq->req->prompt, logits_.data());
    if (prefill_seconds_) prefill_seconds_->Observe(absl::ToDoubleSeconds(absl::Now() - t0));
    budget -= static_cast<int>(seq->req->prompt.size());
    first = false;
    if (!s.ok()) {
      seq->req->stream->Finish(s);
      Release(*seq);
      continue;
    }
    int32_t token = seq->sampler.Sample(logits_.data(), vocab);
    Sequence& ref = *seq;
    active_.push_back(std::move(seq));
    Emit(ref, token);
  }
  active_.erase(std::remove_if(active_.begin(), active_.end(),
                               [](const auto& s) { return s->done; }),
                active_.end());
}

void TextWorkload::DecodeActive() {
  // One batched step per model instance (normally one per served model; two while a hot swap
  // drains the old weights).
  std::map<TextModel*, std::vector<Sequence*>> groups;
  for (auto& seq : active_) groups[seq->model.get()].push_back(seq.get());
  for (auto& [model, seqs] : groups) {
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
    absl::Time t0 = absl::Now();
    absl::Status status = model->Decode(slots, tokens, logits_.data());
    if (step_seconds_) {
      step_seconds_->Observe(absl::ToDoubleSeconds(absl::Now() - t0));
      batch_size_->Observe(static_cast<double>(seqs.size()));
    }
    for (size_t i = 0; i < seqs.size(); ++i) {
      Sequence& seq = *seqs[i];
      if (!status.ok()) {
        seq.req->stream->Finish(status);
        Release(seq);
        continue;
      }
      Emit(seq, seq.sampler.Sample(logits_.data() + i * vocab, vocab));
    }
  }
  active_.erase(std::remove_if(active_.begin(), active_.end(),
                               [](const auto& s) { return s->done; }),
                active_.end());
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
    Complete(seq, Finished::EOS);
    return false;
  }
  seq.next_token = token;
  seq.pending_ids.push_back(token);
  bool stopped = false;
  std::string text = seq.stop.Push(seq.detok.Push(token), &stopped);
  if (stopped) {
    GenerateResponse r;
    r.mutable_text()->set_text(std::move(text));
    if (seq.req->include_token_ids) {
      r.mutable_text()->mutable_token_ids()->Add(seq.pending_ids.begin(), seq.pending_ids.end());
    }
    seq.pending_ids.clear();
    seq.req->stream->Send(std::move(r));
    Complete(seq, Finished::STOP);
    return false;
  }
  // Feeding this token needs one more position; the budget was checked at admission, the
  // context check guards models whose tokenizer ends early.
  const bool length = seq.generated >= seq.req->max_tokens ||
                      seq.model->SlotLength(seq.slot) >= cfg.seq_len;
  if (!text.empty() || (seq.req->include_token_ids && !length)) {
    GenerateResponse r;
    r.mutable_text()->set_text(std::move(text));
    if (seq.req->include_token_ids) {
      r.mutable_text()->mutable_token_ids()->Add(seq.pending_ids.begin(), seq.pending_ids.end());
    }
    seq.pending_ids.clear();
    seq.req->stream->Send(std::move(r));
  }
  if (length) {
    Complete(seq, Finished::LENGTH);
    return false;
  }
  return true;
}

void TextWorkload::Complete(Sequence& seq, int reason) {
  if (seq.done) return;
  if (reason != Finished::CANCELLED) {
    // Whatever the detokenizer and the stop filter still hold belongs to the completion.
    bool stopped = seq.stop.stopped();
    std::string tail;
    if (!stopped) {
      tail = seq.stop.Push(seq.detok.Flush(), &stopped);
      if (!stopped) tail += seq.stop.Flush();
    }
    if (!tail.empty() || (seq.req->include_token_ids && !seq.pending_ids.empty())) {
      GenerateResponse r;
      r.mutable_text()->set_text(std::move(tail));
      if (seq.req->include_token_ids) {
        r.mutable_text()->mutable_token_ids()->Add(seq.pending_ids.begin(),
                                                   seq.pending_ids.end());
      }
      seq.req->stream->Send(std::move(r));
    }
  }
  const absl::Time end = absl::Now();
  GenerateResponse r;
  Finished* f = r.mutable_finished();
  f->set_reason(static_cast<Finished::Reason>(reason));
  f->set_seed(seq.req->sampling.seed);
  f->set_model(seq.req->model->name);
  f->set_model_version(seq.req->model->version);
  auto* u = f->mutable_usage();
  u->set_prompt_tokens(static_cast<int>(seq.req->prompt.size()));
  u->set_completion_tokens(seq.generated);
  u->set_queue_seconds(absl::ToDoubleSeconds(seq.started - seq.req->accepted));
  if (seq.generated > 0) {
    u->set_time_to_first_token_seconds(absl::ToDoubleSeconds(seq.first_token - seq.req->accepted));
  }
  u->set_total_seconds(absl::ToDoubleSeconds(end - seq.req->accepted));
  seq.req->stream->Send(std::move(r));
  seq.req->stream->Finish(reason == Finished::CANCELLED
                              ? absl::CancelledError("the request was cancelled")
                              : absl::OkStatus());
  if (metrics_) {
    metrics_->request_seconds.Add({{"model", seq.req->model->name}}, Metrics::LatencyBuckets())
        .Observe(absl::ToDoubleSeconds(end - seq.req->accepted));
  }
  Release(seq);
}

void TextWorkload::Release(Sequence& seq) {
  if (seq.slot >= 0) {
    seq.model->ReleaseSlot(seq.slot);
    seq.slot = -1;
  }
  seq.done = true;
  if (seq.req->on_done) {
    auto fn = std::move(seq.req->on_done);
    seq.req->on_done = nullptr;
    fn();
  }
}

void TextWorkload::UpdateGauges() {
  if (active_gauge_) {
    active_gauge_->Set(static_cast<double>(active_.size()));
    waiting_gauge_->Set(static_cast<double>(waiting_.size()));
  }
}

}  // namespace tandem

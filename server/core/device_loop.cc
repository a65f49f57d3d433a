#include "server/core/device_loop.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace tandem {

using Decision = SchedulerPolicy::Decision;

DeviceLoop::DeviceLoop(DeviceLoopOptions options, ModelRegistry* registry, Metrics* metrics)
    : options_(std::move(options)),
      registry_(registry),
      metrics_(metrics),
      policy_(options_.scheduler) {}

absl::StatusOr<std::unique_ptr<DeviceLoop>> DeviceLoop::Create(DeviceLoopOptions options,
                                                               ModelRegistry* registry,
                                                               Metrics* metrics) {
  if (!(options.scheduler.train_min_share >= 0 && options.scheduler.train_min_share < 1)) {
    return absl::InvalidArgumentError("train_min_share must be in [0, 1)");
  }
  std::unique_ptr<DeviceLoop> loop(new DeviceLoop(std::move(options), registry, metrics));
  DeviceLoop* raw = loop.get();
  const std::string& device = raw->options_.device;
  const int index = raw->options_.device_index;
  TextWorkloadOptions text_options;
  text_options.device = device;
  text_options.prefill_token_budget = raw->options_.prefill_token_budget;
  raw->text_ = std::make_unique<TextWorkload>(text_options, index, metrics);
  raw->image_ = std::make_unique<ImageWorkload>(device, index, metrics);
  raw->train_ = std::make_unique<TrainWorkload>();
  raw->SetUpMetrics();
  const TrainExecution exec = raw->options_.train_execution;
  raw->executor_ = std::make_unique<Executor>(
      device, exec == TrainExecution::kBackground ? WorkClass::kBackground : WorkClass::kForeground,
      /*inline_work=*/exec == TrainExecution::kInline, [raw] {
        absl::MutexLock lock(&raw->mu_);
        raw->unit_done_ = true;
      });
  raw->thread_ = std::thread([raw] { raw->Run(); });
  return loop;
}

void DeviceLoop::SetUpMetrics() {
  const std::string& device = options_.device;
  for (Workload* w : {static_cast<Workload*>(text_.get()), static_cast<Workload*>(image_.get())}) {
    prometheus::Counter* busy =
        metrics_ ? &metrics_->device_busy_seconds.Add({{"device", device}, {"work", w->name()}})
                 : nullptr;
    inference_.emplace_back(w, busy);
  }
  if (!metrics_) return;
  auto busy = [&](const char* work) {
    return &metrics_->device_busy_seconds.Add({{"device", device}, {"work", work}});
  };
  busy_train_ = busy("train");
  busy_eval_ = busy("eval");
  busy_idle_ = busy("idle");
  chunk_seconds_ =
      &metrics_->train_chunk_seconds.Add({{"device", device}}, Metrics::LatencyBuckets());
  preemption_seconds_ =
      &metrics_->preemption_seconds.Add({{"device", device}}, Metrics::PreemptionBuckets());
  train_share_ = &metrics_->train_share.Add({{"device", device}});
}

DeviceLoop::~DeviceLoop() { Stop(); }

void DeviceLoop::Push(absl::AnyInvocable<void()> fn) {
  inbox_.push_back(Posted{std::move(fn), absl::Now(), training_holds_});
}

template <typename Request, typename Workload>
void DeviceLoop::Enqueue(std::unique_ptr<Request> request, Workload* workload) {
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    request->End(absl::UnavailableError("the server is shutting down"));
    return;
  }
  Push([workload, r = std::move(request)]() mutable { workload->Admit(std::move(r)); });
}

void DeviceLoop::Submit(std::unique_ptr<TextRequest> request) {
  Enqueue(std::move(request), text_.get());
}

void DeviceLoop::Submit(std::unique_ptr<ImageRequest> request) {
  Enqueue(std::move(request), image_.get());
}

void DeviceLoop::StartTraining(TrainTask task) {
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    task.listener->OnEnded(TrainEnd::kStopped, absl::OkStatus());
    return;
  }
  inbox_.push_back(Posted{[this, t = std::move(task)]() mutable {
                            TrainListener* listener = t.listener;
                            if (absl::Status s = train_->Start(std::move(t)); !s.ok()) {
                              listener->OnEnded(TrainEnd::kFailed, s);
                            }
                          },
                          absl::Now(), false});
}

void DeviceLoop::ControlTraining(const std::string& job_id, TrainWorkload::Control control) {
  // Through the inbox, so it is ordered after the StartTraining it is meant for; the unit in
  // flight (if any) reads it when it is done.
  Post([this, job_id, control] { train_->Apply(job_id, control); });
}

void DeviceLoop::SetTrainingSteps(const std::string& job_id, int64_t steps) {
  Post([this, job_id, steps] { train_->SetTotalSteps(job_id, steps); });
}

void DeviceLoop::Post(absl::AnyInvocable<void()> fn) {
  absl::MutexLock lock(&mu_);
  inbox_.push_back(Posted{std::move(fn), absl::Now(), false});
}

bool DeviceLoop::InferenceRunnable() const {
  for (const auto& [workload, busy] : inference_) {
    if (workload->HasWork()) return true;
  }
  return false;
}

bool DeviceLoop::Wait(std::deque<Posted>* batch) {
  absl::MutexLock lock(&mu_);
  const bool can_start =
      InferenceRunnable() || (!unit_in_flight_ && train_->HasWork());
  if (!can_start) {
    const absl::Time t0 = absl::Now();
    const bool idle = !unit_in_flight_;
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !inbox_.empty() || stopping_ || unit_done_;
    };
    training_holds_ = unit_in_flight_;
    mu_.Await(absl::Condition(&ready));
    training_holds_ = false;
    if (idle && busy_idle_) busy_idle_->Increment(absl::ToDoubleSeconds(absl::Now() - t0));
  }
  if (unit_done_) TrainUnitDone();
  if (stopping_) return false;
  batch->swap(inbox_);
  return true;
}

void DeviceLoop::TrainUnitDone() {
  unit_done_ = false;
  unit_in_flight_ = false;
  const double seconds = absl::ToDoubleSeconds(unit_took_);
  policy_.Record(SchedulerPolicy::Work::kTrain, unit_took_, absl::Now());
  const bool eval = unit_kind_ == TrainWorkload::UnitKind::kEval;
  if (prometheus::Counter* c = eval ? busy_eval_ : busy_train_) c->Increment(seconds);
  if (chunk_seconds_ && unit_kind_ == TrainWorkload::UnitKind::kTrain) {
    chunk_seconds_->Observe(seconds);
  }
}

void DeviceLoop::Run() {
  std::deque<Posted> batch;
  while (Wait(&batch)) {
    for (Posted& p : batch) {
      p.fn();
      if (p.during_training) arrivals_.push_back(p.arrived);
    }
    batch.clear();
    Step();
  }
  // Work posted before the stop still gets its stream finished; the unit in flight ends first.
  gate_.Open();
  executor_.reset();
  std::deque<Posted> rest;
  {
    absl::MutexLock lock(&mu_);
    rest.swap(inbox_);
  }
  for (Posted& p : rest) p.fn();
  const absl::Status stopping = absl::UnavailableError("the server is shutting down");
  for (auto& [workload, busy] : inference_) workload->AbortAll(stopping);
  train_->AbortAll(stopping);
}

void DeviceLoop::Step() {
  bool in_flight;
  {
    absl::MutexLock lock(&mu_);
    in_flight = unit_in_flight_;
  }
  const bool train_runnable = !in_flight && train_->HasWork();
  const bool inference = InferenceRunnable();
  const absl::Time now = absl::Now();
  const Decision decision = policy_.Decide(inference, train_runnable, in_flight, now);
  // While inference has the device, a unit in flight waits at its next yield point; whatever
  // else the loop does (train, wait for training, sleep) lets it go on.
  if (decision == Decision::kRunInference) {
    gate_.Close();
  } else {
    gate_.Open();
  }
  switch (decision) {
    case Decision::kRunInference: RunInference(); break;
    case Decision::kDispatchTrain: DispatchTrainUnit(/*owed=*/inference); break;
    case Decision::kWaitForTrain: WaitForTrainUnit(); break;
    case Decision::kIdle: break;
  }
  if (!InferenceRunnable()) gate_.Open();  // the loop is about to wait
  ReleaseTeamIfTrainingAlone();
  if (train_share_) train_share_->Set(policy_.train_share(absl::Now()));
}

void DeviceLoop::ReleaseTeamIfTrainingAlone() {
  if (options_.train_execution == TrainExecution::kInline || InferenceRunnable()) return;
  {
    absl::MutexLock lock(&mu_);
    if (!unit_in_flight_) return;
  }
  // The loop is about to wait while the executor trains: with this thread's OpenMP team gone, the
  // training team is the only one and spin-waits between its parallel regions (as training does
  // in a process of its own) instead of sleeping.
  ReleaseThreadTeam();
}

void DeviceLoop::RunInference() {
  // Work that arrived while training held the device gets its first operation now.
  const absl::Time start = absl::Now();
  if (preemption_seconds_) {
    for (absl::Time t : arrivals_) preemption_seconds_->Observe(absl::ToDoubleSeconds(start - t));
  }
  arrivals_.clear();
  // One iteration of each workload (an LLM decode step, then a denoising step): text streams
  // keep flowing while images denoise, each waiting at most one step of the other.
  for (auto& [workload, busy] : inference_) {
    if (!workload->HasWork()) continue;
    const absl::Time t0 = absl::Now();
    workload->RunIteration();
    const absl::Duration took = absl::Now() - t0;
    policy_.Record(SchedulerPolicy::Work::kInference, took, absl::Now());
    if (busy) busy->Increment(absl::ToDoubleSeconds(took));
  }
}

void DeviceLoop::DispatchTrainUnit(bool owed) {
  const bool inline_unit = options_.train_execution == TrainExecution::kInline;
  {
    absl::MutexLock lock(&mu_);
    unit_in_flight_ = true;
    training_holds_ = inline_unit;  // the loop itself runs it: arrivals wait for it
  }
  const WorkClass work = owed || options_.train_execution != TrainExecution::kBackground
                             ? WorkClass::kForeground
                             : WorkClass::kBackground;
  // The executor reports through unit_done_; the unit's kind and time reach the loop with it.
  const bool taken = executor_->Run(
      [this, inline_unit] {
        // On the executor the unit obeys the gate; inline, the loop is not running inference.
        if (!inline_unit) SetThreadTrainGate(&gate_);
        const absl::Duration paused = ThreadPausedTime();
        const absl::Time t0 = absl::Now();
        unit_kind_ = train_->RunUnit();
        // The device time it took: not the time it waited for inference.
        unit_took_ = absl::Now() - t0 - (ThreadPausedTime() - paused);
      },
      work);
  absl::MutexLock lock(&mu_);
  training_holds_ = false;
  if (!taken) unit_in_flight_ = false;
}

void DeviceLoop::WaitForTrainUnit() {
  absl::MutexLock lock(&mu_);
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return unit_done_ || stopping_; };
  training_holds_ = true;
  mu_.Await(absl::Condition(&done));
  training_holds_ = false;
  if (unit_done_) TrainUnitDone();
}

void DeviceLoop::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

}  // namespace tandem

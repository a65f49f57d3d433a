#include "bench/colocate.h"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_client.h"
#include "bench/recipe.h"
#include "tandem/v1/inference.grpc.pb.h"
#include "tandem/v1/training.grpc.pb.h"

ABSL_FLAG(std::string, metrics, "127.0.0.1:9090", "colocate: tandemd's metrics HOST:PORT");
ABSL_FLAG(std::string, text_model, "", "colocate: the text model to serve ('' skips text)");
ABSL_FLAG(std::string, image_model, "", "colocate: the image model to serve ('' skips images)");
ABSL_FLAG(std::string, loads, "0.1,0.3,0.5,0.7", "colocate: loads, fractions of solo capacity");
ABSL_FLAG(double, window_seconds, 30, "colocate: length of each measured trace");
ABSL_FLAG(int, min_requests, 0,
          "colocate: each trace goes on past --window_seconds until it holds this many requests "
          "(a p99 of fewer than ~100 is its worst one or two; 0: the window alone)");
ABSL_FLAG(int, text_tokens, 32, "colocate: tokens per text request (greedy)");
ABSL_FLAG(int, image_steps, 20, "colocate: DDIM steps per image request");
ABSL_FLAG(std::string, text_dataset, "fortunes.txt", "colocate: the text job's dataset");
ABSL_FLAG(std::string, image_dataset, "fashion-mnist", "colocate: the image job's dataset");
ABSL_FLAG(std::string, text_spec, "scripts/recipes/text.json", "colocate: the text job's recipe");
ABSL_FLAG(std::string, image_spec, "scripts/recipes/image.json", "colocate: the image job's recipe");
ABSL_FLAG(int, train_chunk_rows, 0, "colocate: the jobs' chunk_rows (0: server calibrates)");
ABSL_FLAG(uint64_t, trace_seed, 1, "colocate: seed of the Poisson traces");

namespace tandem::bench {
namespace {

namespace v1 = tandem::v1;

// What one window of requests measured.
struct Window {
  std::vector<double> first;    // time to first token (text) or to the first step (image)
  std::vector<double> gaps;     // text: inter-token gaps
  std::vector<double> latency;  // whole request
  int failed = 0;
  double busy_share = 0;        // the device's inference seconds / wall
  double train_steps = 0;       // the job's steps during the window
  double preempt_p99 = 0;       // seconds (bucket upper bound)
  int64_t preemptions = 0;
  double wall = 0;
};

// Poisson arrivals at `rate` per second over `seconds`, and on until there are `min_count`,
// from a fixed seed: the same trace alone and beside training.
std::vector<double> PoissonTrace(double rate, double seconds, int min_count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(rate);
  std::vector<double> t;
  for (double now = gap(rng); now < seconds || static_cast<int>(t.size()) < min_count;
       now += gap(rng)) {
    t.push_back(now);
  }
  return t;
}

class Colocation {
 public:
  Colocation(const std::shared_ptr<grpc::Channel>& channel)
      : inference_(v1::Inference::NewStub(channel)), training_(v1::Training::NewStub(channel)) {}

  int Run(bool text) {
    const char* kind = text ? "text" : "image";
    const v1::GenerateRequest req = Request(text);
    const double service = SoloServiceTime(req, text);
    if (service <= 0) return 1;
    std::printf("\n== %s: solo service time %.1f ms (capacity %.2f requests/s)\n", kind,
                service * 1e3, 1 / service);
    std::vector<double> loads;
    for (absl::string_view p : absl::StrSplit(absl::GetFlag(FLAGS_loads), ',')) {
      double f = 0;
      if (absl::SimpleAtod(p, &f) && f > 0) loads.push_back(f);
    }
    std::vector<Window> alone, beside;
    for (double f : loads) alone.push_back(RunWindow(req, text, f / service, f, ""));
    std::string job;
    double solo_rate = 0;
    if (!StartJob(text, &job, &solo_rate)) return 1;
    for (double f : loads) beside.push_back(RunWindow(req, text, f / service, f, job));
    CancelJob(job);
    Print(text, loads, alone, beside, solo_rate);
    return 0;
  }

 private:
  v1::GenerateRequest Request(bool text) const {
    v1::GenerateRequest r;
    if (text) {
      r.set_model(absl::GetFlag(FLAGS_text_model));
      r.set_prompt("Q: What is the meaning of life?\nA:");
      r.mutable_text()->set_max_tokens(absl::GetFlag(FLAGS_text_tokens));
      r.mutable_text()->set_temperature(0);
      r.mutable_text()->set_include_token_ids(true);
    } else {
      r.set_model(absl::GetFlag(FLAGS_image_model));
      r.set_prompt("a photo of a sneaker");
      r.mutable_image()->set_steps(absl::GetFlag(FLAGS_image_steps));
      r.mutable_image()->set_seed(7);
    }
    return r;
  }

  // One request's numbers into *w (under mu).
  void Measure(const v1::GenerateRequest& req, bool text, Window* w, std::mutex* mu) {
    if (text) {
      const StreamStats s = RunStream(inference_.get(), req);
      std::lock_guard<std::mutex> lock(*mu);
      if (!s.ok) {
        ++w->failed;
        return;
      }
      w->first.push_back(s.ttft);
      w->gaps.insert(w->gaps.end(), s.gaps.begin(), s.gaps.end());
      w->latency.push_back(s.total);
    } else {
      const ImageStats s = RunImage(inference_.get(), req);
      std::lock_guard<std::mutex> lock(*mu);
      if (!s.ok) {
        ++w->failed;
        return;
      }
      w->first.push_back(s.first_step);
      w->latency.push_back(s.total);
    }
  }

  double SoloServiceTime(const v1::GenerateRequest& req, bool text) {
    Window w;
    std::mutex mu;
    Measure(req, text, &w, &mu);  // warm-up
    w = Window();
    for (int i = 0; i < 8; ++i) Measure(req, text, &w, &mu);
    if (w.failed > 0 || w.latency.empty()) {
      std::fprintf(stderr, "tandem-bench: the solo requests failed\n");
      return 0;
    }
    double sum = 0;
    for (double l : w.latency) sum += l;
    return sum / w.latency.size();
  }

  int64_t JobStep(const std::string& job) {
    grpc::ClientContext ctx;
    v1::GetTrainJobRequest req;
    req.set_id(job);
    v1::TrainJob out;
    if (!training_->GetTrainJob(&ctx, req, &out).ok()) return -1;
    return out.latest().step();
  }

  Window RunWindow(const v1::GenerateRequest& req, bool text, double rate, double load,
                   const std::string& job) {
    const std::vector<double> trace =
        PoissonTrace(rate, absl::GetFlag(FLAGS_window_seconds), absl::GetFlag(FLAGS_min_requests),
                     absl::GetFlag(FLAGS_trace_seed));
    const std::string device_work = text ? "work=\"text\"" : "work=\"image\"";
    absl::StatusOr<Scrape> before = ScrapeMetrics(absl::GetFlag(FLAGS_metrics));
    const int64_t step0 = job.empty() ? 0 : JobStep(job);
    Window w;
    std::mutex mu;
    std::vector<std::thread> clients;
    const auto t0 = Clock::now();
    for (double at : trace) {
      std::this_thread::sleep_until(t0 + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(at)));
      clients.emplace_back([&, req] { Measure(req, text, &w, &mu); });
    }
    for (auto& c : clients) c.join();
    w.wall = SecondsBetween(t0, Clock::now());
    absl::StatusOr<Scrape> after = ScrapeMetrics(absl::GetFlag(FLAGS_metrics));
    if (before.ok() && after.ok()) {
      w.busy_share = (Sum(*after, "tandem_device_busy_seconds_total", {device_work}) -
                      Sum(*before, "tandem_device_busy_seconds_total", {device_work})) /
                     w.wall;
      w.preempt_p99 = HistogramQuantile(*before, *after, "tandem_preemption_seconds", {}, 0.99,
                                        &w.preemptions);
    }
    if (!job.empty()) w.train_steps = static_cast<double>(JobStep(job) - step0);
    std::printf("  %s load %.2f (%zu requests, %s): done in %.1f s\n", text ? "text" : "image",
                load, trace.size(), job.empty() ? "alone" : "beside training", w.wall);
    std::fflush(stdout);
    return w;
  }

  // The demo's recipe (scripts/recipes/), run until the measurement cancels it.
  v1::TrainJobSpec JobSpec(bool text) const {
    const std::string file = absl::GetFlag(text ? FLAGS_text_spec : FLAGS_image_spec);
    v1::TrainJobSpec spec = ReadRecipeOrExit("tandem-bench", file);
    spec.set_name(text ? "bench-text" : "bench-image");
    spec.set_dataset(absl::GetFlag(text ? FLAGS_text_dataset : FLAGS_image_dataset));
    spec.clear_deploy_as();
    auto* h = spec.mutable_hyperparameters();
    h->set_max_seconds(0);
    h->set_steps(1000000);  // cancelled when the measurement is done
    h->set_eval_every(1000000);
    h->set_checkpoint_every(1000000);
    h->set_chunk_rows(absl::GetFlag(FLAGS_train_chunk_rows));
    return spec;
  }

  // Submits the job, waits for it to get going, then measures its solo rate (steps/s).
  bool StartJob(bool text, std::string* job, double* solo_rate) {
    grpc::ClientContext ctx;
    v1::SubmitTrainJobRequest req;
    *req.mutable_spec() = JobSpec(text);
    v1::TrainJob out;
    grpc::Status s = training_->SubmitTrainJob(&ctx, req, &out);
    if (!s.ok()) {
      std::fprintf(stderr, "tandem-bench: submitting the job: %s\n", s.error_message().c_str());
      return false;
    }
    *job = out.id();
    // Past the tokenizer, the calibration and the first steps.
    const auto deadline = Clock::now() + std::chrono::minutes(10);
    while (JobStep(*job) < 3) {
      if (Clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    const int64_t step0 = JobStep(*job);
    const auto t0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(absl::GetFlag(FLAGS_window_seconds)));
    *solo_rate = (JobStep(*job) - step0) / SecondsBetween(t0, Clock::now());
    const double items = text ? 16.0 * 128 : 32.0;
    std::printf("  %s job %s alone: %.3f steps/s (%.0f %s/s)\n", text ? "text" : "image",
                job->c_str(), *solo_rate, *solo_rate * items, text ? "tokens" : "images");
    return true;
  }

  void CancelJob(const std::string& job) {
    grpc::ClientContext ctx;
    v1::CancelTrainJobRequest req;
    req.set_id(job);
    v1::TrainJob out;
    (void)training_->CancelTrainJob(&ctx, req, &out);
  }

  void Print(bool text, const std::vector<double>& loads, const std::vector<Window>& alone,
             const std::vector<Window>& beside, double solo_rate) {
    std::printf("\n%s: p99 latencies alone -> beside training (ratio); training harvest\n",
                text ? "text" : "image");
    std::printf("%6s %22s %22s %22s %8s %8s %8s %10s %6s\n", "load",
                text ? "ttft_p99 ms" : "first_step_p99 ms", text ? "itl_p99 ms" : "",
                "request_p99 ms", "busy", "steps/s", "harvest", "preempt99", "fails");
    for (size_t i = 0; i < loads.size(); ++i) {
      const Window& a = alone[i];
      const Window& b = beside[i];
      auto cell = [](double x, double y) {
        char buf[64];
        std::snprintf(buf, sizeof(buf), "%7.1f -> %7.1f (%4.2f)", x * 1e3, y * 1e3,
                      x > 0 ? y / x : 0);
        return std::string(buf);
      };
      const double rate = b.train_steps / b.wall;
      const double harvest =
          solo_rate > 0 && b.busy_share < 1 ? rate / ((1 - b.busy_share) * solo_rate) : 0;
      std::printf("%6.2f %22s %22s %22s %7.0f%% %8.3f %8.2f %8.2fms %6d\n", loads[i],
                  cell(Percentile(a.first, 0.99), Percentile(b.first, 0.99)).c_str(),
                  text ? cell(Percentile(a.gaps, 0.99), Percentile(b.gaps, 0.99)).c_str() : "",
                  cell(Percentile(a.latency, 0.99), Percentile(b.latency, 0.99)).c_str(),
                  b.busy_share * 100, rate, harvest, b.preempt_p99 * 1e3, a.failed + b.failed);
    }
    std::fflush(stdout);
  }

  std::unique_ptr<v1::Inference::Stub> inference_;
  std::unique_ptr<v1::Training::Stub> training_;
};

}  // namespace

int RunColocateBench(const std::shared_ptr<grpc::Channel>& channel) {
  Colocation c(channel);
  int rc = 0;
  if (!absl::GetFlag(FLAGS_text_model).empty()) rc |= c.Run(/*text=*/true);
  if (!absl::GetFlag(FLAGS_image_model).empty()) rc |= c.Run(/*text=*/false);
  return rc;
}

}  // namespace tandem::bench

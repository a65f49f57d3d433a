// What tandem-bench's modes share as a client of tandemd: running one text stream or one image
// request and timing what comes back, percentiles, and reading the server's /metrics.
#ifndef TANDEM_BENCH_BENCH_CLIENT_H_
#define TANDEM_BENCH_BENCH_CLIENT_H_

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/bench_util.h"
#include "tandem/v1/inference.grpc.pb.h"

namespace tandem::bench {

double SecondsBetween(Clock::time_point from, Clock::time_point to);
// The p-quantile (0..1) of v, nearest rank; 0 for an empty v.
double Percentile(std::vector<double> v, double p);

// What every request's run reports.
struct RunStats {
  bool ok = false;
  std::string error;
};

// Sends `req` and hands every response to on_response with the seconds since sending; then the
// call's outcome into *stats. Returns the seconds the call took.
double Stream(tandem::v1::Inference::Stub* stub, const tandem::v1::GenerateRequest& req,
              const std::function<void(const tandem::v1::GenerateResponse&, double seconds)>&
                  on_response,
              RunStats* stats);

struct StreamStats : RunStats {
  double ttft = 0;
  std::vector<double> gaps;  // seconds between consecutive tokens
  int tokens = 0;
  int prompt_tokens = 0;
  double total = 0;
};
StreamStats RunStream(tandem::v1::Inference::Stub* stub, const tandem::v1::GenerateRequest& req);

struct ImageStats : RunStats {
  double first_step = 0;  // seconds from sending to the first ImageProgress
  double total = 0;
  double queue = 0;  // server side: accepted -> admitted to the device (Finished.usage)
  std::vector<double> step_gaps;
};
// Runs one image request; `at_step` is told each progress step (to time arrivals mid-way).
ImageStats RunImage(tandem::v1::Inference::Stub* stub, const tandem::v1::GenerateRequest& req,
                    const std::function<void(int)>& at_step = nullptr);

// One scrape of a Prometheus text exposition: every sample by its full series name
// ("name{label=\"v\",...}", labels as the server printed them).
using Scrape = std::map<std::string, double>;
absl::StatusOr<Scrape> ScrapeMetrics(const std::string& host_port);
// The sum over the series of `name` whose labels contain every `labels` entry ("k=\"v\"").
double Sum(const Scrape& s, const std::string& name, const std::vector<std::string>& labels = {});
// A histogram's quantile from the difference of two scrapes (bucket upper bounds, so an upper
// estimate), over the series whose labels contain `labels`; 0 without observations.
double HistogramQuantile(const Scrape& before, const Scrape& after, const std::string& name,
                         const std::vector<std::string>& labels, double q, int64_t* count);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_BENCH_CLIENT_H_

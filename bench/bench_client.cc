#include "bench/bench_client.h"

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tandem::bench {

using tandem::v1::GenerateRequest;
using tandem::v1::GenerateResponse;
using tandem::v1::Inference;

double SecondsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * (v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

double Stream(Inference::Stub* stub, const GenerateRequest& req,
              const std::function<void(const GenerateResponse&, double seconds)>& on_response,
              RunStats* stats) {
  const auto t0 = Clock::now();
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, req);
  GenerateResponse resp;
  while (reader->Read(&resp)) on_response(resp, SecondsBetween(t0, Clock::now()));
  const double total = SecondsBetween(t0, Clock::now());
  const grpc::Status st = reader->Finish();
  stats->ok = st.ok();
  if (!st.ok()) stats->error = st.error_message();
  return total;
}

StreamStats RunStream(Inference::Stub* stub, const GenerateRequest& req) {
  StreamStats s;
  double last = 0;  // when the previous tokens arrived
  s.total = Stream(
      stub, req,
      [&](const GenerateResponse& resp, double now) {
        if (resp.has_text()) {
          const int n = std::max(1, resp.text().token_ids_size());
          if (s.tokens == 0) {
            s.ttft = now;
          } else {
            // Coalesced deltas (a slow reader) spread their gap over their tokens.
            const double gap = (now - last) / n;
            for (int i = 0; i < n; ++i) s.gaps.push_back(gap);
          }
          last = now;
          s.tokens += n;
        } else if (resp.has_finished()) {
          s.tokens = resp.finished().usage().completion_tokens();
          s.prompt_tokens = resp.finished().usage().prompt_tokens();
        }
      },
      &s);
  return s;
}

ImageStats RunImage(Inference::Stub* stub, const GenerateRequest& req,
                    const std::function<void(int)>& at_step) {
  ImageStats s;
  double last = 0;  // when the previous step was reported
  s.total = Stream(
      stub, req,
      [&](const GenerateResponse& resp, double now) {
        if (resp.has_finished()) s.queue = resp.finished().usage().queue_seconds();
        if (!resp.has_progress()) return;
        if (resp.progress().step() == 1) {
          s.first_step = now;
        } else {
          s.step_gaps.push_back(now - last);
        }
        last = now;
        if (at_step) at_step(resp.progress().step());
      },
      &s);
  return s;
}

absl::StatusOr<Scrape> ScrapeMetrics(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(host_port.substr(colon + 1), &port)) {
    return absl::InvalidArgumentError(absl::StrCat("not HOST:PORT: ", host_port));
  }
  httplib::Client http(host_port.substr(0, colon), port);
  auto res = http.Get("/metrics");
  if (!res || res->status != 200) {
    return absl::UnavailableError(absl::StrCat("cannot scrape http://", host_port, "/metrics"));
  }
  Scrape out;
  std::istringstream in(res->body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    double v = 0;
    if (space == std::string::npos || !absl::SimpleAtod(line.substr(space + 1), &v)) continue;
    out[line.substr(0, space)] = v;
  }
  return out;
}

namespace {

bool Matches(const std::string& series, const std::string& name,
             const std::vector<std::string>& labels) {
  if (series.compare(0, name.size(), name) != 0) return false;
  if (series.size() > name.size() && series[name.size()] != '{') return false;
  for (const std::string& l : labels) {
    if (series.find(l) == std::string::npos) return false;
  }
  return true;
}

}  // namespace

double Sum(const Scrape& s, const std::string& name, const std::vector<std::string>& labels) {
  double total = 0;
  for (const auto& [series, v] : s) {
    if (Matches(series, name, labels)) total += v;
  }
  return total;
}

double HistogramQuantile(const Scrape& before, const Scrape& after, const std::string& name,
                         const std::vector<std::string>& labels, double q, int64_t* count) {
  // Cumulative bucket counts by upper bound, summed over the matching series.
  std::map<double, double> buckets;
  for (const auto& [series, v] : after) {
    if (!Matches(series, name + "_bucket", labels)) continue;
    const size_t le = series.find("le=\"");
    if (le == std::string::npos) continue;
    const std::string bound = series.substr(le + 4, series.find('"', le + 4) - le - 4);
    double upper = std::numeric_limits<double>::infinity();
    if (bound != "+Inf" && !absl::SimpleAtod(bound, &upper)) continue;
    auto b = before.find(series);
    buckets[upper] += v - (b == before.end() ? 0 : b->second);
  }
  const double total = buckets.empty() ? 0 : buckets.rbegin()->second;
  if (count) *count = static_cast<int64_t>(total);
  if (total <= 0) return 0;
  for (const auto& [upper, cumulative] : buckets) {
    if (cumulative >= q * total) return upper;
  }
  return buckets.rbegin()->first;
}

}  // namespace tandem::bench

#include "server/metrics/process_metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <system_error>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace tandem {
namespace {

prometheus::MetricFamily Single(const char* name, const char* help, prometheus::MetricType type,
                                double value) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(m);
  return f;
}

// The fields of /proc/self/stat after the command name (which may hold spaces): field 3 (state)
// is fields[0].
std::optional<std::vector<std::string>> StatFields() {
  std::ifstream in("/proc/self/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  const size_t close = line.rfind(')');
  if (close == std::string::npos || close + 2 > line.size()) return std::nullopt;
  return std::vector<std::string>(absl::StrSplit(line.substr(close + 2), ' '));
}

// Seconds since the epoch at which the machine booted (/proc/stat's btime).
std::optional<double> BootTime() {
  std::ifstream in("/proc/stat");
  std::string key;
  double value;
  while (in >> key) {
    if (key == "btime" && in >> value) return value;
    in.ignore(1 << 20, '\n');
  }
  return std::nullopt;
}

std::optional<int> OpenFds() {
  std::error_code ec;
  int n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  if (ec) return std::nullopt;
  return n - 1;  // the directory iterator's own descriptor
}

}  // namespace

std::vector<prometheus::MetricFamily> ProcessMetricFamilies() {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  if (std::optional<std::vector<std::string>> f = StatFields(); f && f->size() > 21) {
    // Fields (1-based, as in proc(5)): 14 utime, 15 stime, 22 starttime, 23 vsize, 24 rss.
    double utime, stime, start, vsize, rss;
    if (absl::SimpleAtod((*f)[11], &utime) && absl::SimpleAtod((*f)[12], &stime)) {
      out.push_back(Single("process_cpu_seconds_total", "User and system CPU time spent.",
                           MetricType::Counter, (utime + stime) / ticks));
    }
    if (absl::SimpleAtod((*f)[20], &vsize)) {
      out.push_back(Single("process_virtual_memory_bytes", "Virtual memory size.",
                           MetricType::Gauge, vsize));
    }
    if (absl::SimpleAtod((*f)[21], &rss)) {
      out.push_back(Single("process_resident_memory_bytes", "Resident memory size.",
                           MetricType::Gauge, rss * page));
    }
    std::optional<double> boot = BootTime();
    if (boot && absl::SimpleAtod((*f)[19], &start)) {
      out.push_back(Single("process_start_time_seconds",
                           "Start time of the process since the Unix epoch.", MetricType::Gauge,
                           *boot + start / ticks));
    }
  }
  if (std::optional<int> fds = OpenFds()) {
    out.push_back(Single("process_open_fds", "Open file descriptors.", MetricType::Gauge, *fds));
  }
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    out.push_back(Single("process_max_fds", "Maximum number of open file descriptors.",
                         MetricType::Gauge, static_cast<double>(limit.rlim_cur)));
  }
  return out;
}

}  // namespace tandem

// ProcessMetricFamilies: the standard process_* families of Prometheus' client libraries, read
// from /proc/self at the moment of the call (a scrape): resident and virtual memory, open and
// maximum file descriptors, CPU seconds, start time. Linux only; a value that cannot be read is
// left out. Thread-safe (reads only).
#ifndef TANDEM_SERVER_METRICS_PROCESS_METRICS_H_
#define TANDEM_SERVER_METRICS_PROCESS_METRICS_H_

#include <vector>

#include "prometheus/metric_family.h"

namespace tandem {

std::vector<prometheus::MetricFamily> ProcessMetricFamilies();

}  // namespace tandem

#endif  // TANDEM_SERVER_METRICS_PROCESS_METRICS_H_

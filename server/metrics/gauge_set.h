// GaugeSet: the series of one gauge family that differ in one label (e.g. model) while the others
// stay fixed (e.g. device), set together from a count per label value: a value seen before and
// absent now reads 0 (a model whose last request ended shows 0, not its last count). A null
// family makes every call a no-op (metrics off). Not thread-safe: one owner thread.
#ifndef TANDEM_SERVER_METRICS_GAUGE_SET_H_
#define TANDEM_SERVER_METRICS_GAUGE_SET_H_

#include <map>
#include <string>
#include <utility>

#include "prometheus/family.h"
#include "prometheus/gauge.h"

namespace tandem {

class GaugeSet {
 public:
  GaugeSet() = default;
  GaugeSet(prometheus::Family<prometheus::Gauge>* family, std::string label,
           std::map<std::string, std::string> fixed)
      : family_(family), label_(std::move(label)), fixed_(std::move(fixed)) {}

  void Set(const std::map<std::string, int>& values) {
    if (!family_) return;
    for (auto& [key, gauge] : gauges_) {
      auto it = values.find(key);
      gauge->Set(it == values.end() ? 0 : it->second);
    }
    for (const auto& [key, value] : values) {
      if (gauges_.count(key)) continue;
      std::map<std::string, std::string> labels = fixed_;
      labels[label_] = key;
      prometheus::Gauge* g = &family_->Add(labels);
      g->Set(value);
      gauges_.emplace(key, g);
    }
  }

 private:
  prometheus::Family<prometheus::Gauge>* family_ = nullptr;
  std::string label_;
  std::map<std::string, std::string> fixed_;
  std::map<std::string, prometheus::Gauge*> gauges_;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_METRICS_GAUGE_SET_H_

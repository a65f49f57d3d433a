#include "server/core/placement.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace tandem {

Placement::Placement(std::vector<int64_t> train_budgets) {
  for (int64_t b : train_budgets) devices_.push_back(Device{b});
  if (devices_.empty()) devices_.push_back(Device{});
}

int Placement::PlaceRequest() {
  absl::MutexLock lock(&mu_);
  int best = 0;
  for (int i = 1; i < static_cast<int>(devices_.size()); ++i) {
    const Device& d = devices_[i];
    const Device& b = devices_[best];
    if (d.requests < b.requests || (d.requests == b.requests && d.job.empty() && !b.job.empty())) {
      best = i;
    }
  }
  ++devices_[best].requests;
  return best;
}

void Placement::RequestEnded(int device) {
  absl::MutexLock lock(&mu_);
  --devices_[device].requests;
}

int Placement::requests(int device) const {
  absl::MutexLock lock(&mu_);
  return devices_[device].requests;
}

int Placement::total_requests() const {
  absl::MutexLock lock(&mu_);
  int n = 0;
  for (const Device& d : devices_) n += d.requests;
  return n;
}

absl::Status Placement::CheckJobFits(int64_t bytes) const {
  absl::MutexLock lock(&mu_);
  int64_t largest = 0;
  for (const Device& d : devices_) {
    if (Fits(d, bytes)) return absl::OkStatus();
    largest = std::max(largest, d.train_budget);
  }
  return absl::ResourceExhaustedError(absl::StrFormat(
      "this job would need about %.0f MiB of training memory (weights, gradients, AdamW state, "
      "activations); the largest device budget is %.0f MiB (--train_memory_limit_mb, or the "
      "device's free memory): lower batch_size or the model size",
      bytes / 1048576.0, largest / 1048576.0));
}

int Placement::PlaceJob(const std::string& id, int64_t bytes) {
  absl::MutexLock lock(&mu_);
  int best = -1;
  for (int i = 0; i < static_cast<int>(devices_.size()); ++i) {
    const Device& d = devices_[i];
    if (!d.job.empty() || !Fits(d, bytes)) continue;
    if (best < 0 || d.requests < devices_[best].requests) best = i;
  }
  if (best >= 0) {
    devices_[best].job = id;
    devices_[best].job_bytes = bytes;
  }
  return best;
}

void Placement::JobEnded(int device) {
  absl::MutexLock lock(&mu_);
  devices_[device].job.clear();
  devices_[device].job_bytes = 0;
}

std::string Placement::job(int device) const {
  absl::MutexLock lock(&mu_);
  return devices_[device].job;
}

}  // namespace tandem

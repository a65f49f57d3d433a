// Workload: one kind of work a DeviceLoop interleaves (text generation, image generation), and
// the mechanisms the workloads share: the priority queue of requests waiting for the device, and
// the bookkeeping of the requests running on it. Owned by a DeviceLoop; everything here runs on
// that loop's thread (not thread-safe).
#ifndef TANDEM_SERVER_CORE_WORKLOAD_H_
#define TANDEM_SERVER_CORE_WORKLOAD_H_

#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "server/core/model_registry.h"

namespace tandem {

class Workload {
 public:
  virtual ~Workload() = default;
  // The `work` label of tandem_device_busy_seconds_total: "text", "image".
  virtual const char* name() const = 0;
  virtual bool HasWork() const = 0;
  // One bounded unit of work: drop what was cancelled, admit what fits, advance every running
  // request by one step (one decode step, one denoising step).
  virtual void RunIteration() = 0;
  // Ends every request with `status` (the server is stopping).
  virtual void AbortAll(const absl::Status& status) = 0;
};

// The instance of `entry` on device `device_index` (ModelEntry::text or ::image), or
// FAILED_PRECONDITION when the entry was not built for that device.
template <typename Model>
absl::StatusOr<std::shared_ptr<Model>> InstanceOn(const ModelEntry& entry, int device_index) {
  const std::vector<std::shared_ptr<Model>>* all;
  if constexpr (std::is_same_v<Model, TextModel>) {
    all = &entry.text;
  } else {
    all = &entry.image;
  }
  if (device_index < 0 || device_index >= static_cast<int>(all->size()) ||
      (*all)[device_index] == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("model \"", entry.name, "\" (version ", entry.version,
                     ") has no instance on device ", device_index));
  }
  return (*all)[device_index];
}

// Requests waiting for the device: higher priority first, arrival order within a priority.
template <typename Request>
class RequestQueue {
 public:
  void Push(std::unique_ptr<Request> request) {
    auto it = std::find_if(queue_.begin(), queue_.end(), [&](const auto& w) {
      return w->priority < request->priority;
    });
    queue_.insert(it, std::move(request));
  }
  bool empty() const { return queue_.empty(); }
  int size() const { return static_cast<int>(queue_.size()); }
  // Waiting requests per model name (for the gauges).
  std::map<std::string, int> CountByModel() const {
    std::map<std::string, int> n;
    for (const auto& r : queue_) ++n[r->model->name];
    return n;
  }
  Request& front() { return *queue_.front(); }
  // The front request, admitted: it no longer counts as waiting.
  std::unique_ptr<Request> Pop() {
    auto r = std::move(queue_.front());
    queue_.pop_front();
    r->queue_ticket.reset();
    return r;
  }
  // Ends the front request with `status`.
  void FailFront(const absl::Status& status) { Pop()->End(status); }
  // Ends the front request if its caller has gone (or its deadline passed): checked again just
  // before a request is started, so one whose deadline passed while it waited never reaches the
  // device. True when it was dropped.
  bool DropCancelledFront() {
    if (queue_.empty() || !queue_.front()->stream->cancelled()) return false;
    FailFront(absl::CancelledError("cancelled before it started"));
    return true;
  }
  // Ends every request whose caller has gone.
  void DropCancelled() {
    for (auto it = queue_.begin(); it != queue_.end();) {
      if ((*it)->stream->cancelled()) {
        (*it)->End(absl::CancelledError("cancelled before it started"));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
  }
  void AbortAll(const absl::Status& status) {
    while (!queue_.empty()) FailFront(status);
  }

 private:
  std::deque<std::unique_ptr<Request>> queue_;
};

// Requests running on the device. Item: has `req` (unique_ptr<Request>), `model`
// (shared_ptr<Model>, the instance it runs on) and `done`.
template <typename Item>
class RunningSet {
 public:
  std::vector<std::unique_ptr<Item>>& items() { return items_; }
  bool empty() const { return items_.empty(); }
  int size() const { return static_cast<int>(items_.size()); }
  // The items not done per model name, each counting weight(item) (for the gauges).
  template <typename Weight>
  std::map<std::string, int> CountByModel(Weight weight) const {
    std::map<std::string, int> n;
    for (const auto& item : items_) {
      if (!item->done) n[item->req->model->name] += weight(*item);
    }
    return n;
  }
  Item& Add(std::unique_ptr<Item> item) {
    items_.push_back(std::move(item));
    return *items_.back();
  }
  // Forgets the items that are done.
  void Sweep() {
    items_.erase(std::remove_if(items_.begin(), items_.end(),
                                [](const auto& i) { return i->done; }),
                 items_.end());
  }
  // The running items by model instance: one batched step per instance (normally one per served
  // model; two while a hot swap drains the old weights).
  template <typename Model>
  std::map<Model*, std::vector<Item*>> ByInstance() {
    std::map<Model*, std::vector<Item*>> groups;
    for (auto& item : items_) groups[item->model.get()].push_back(item.get());
    return groups;
  }

 private:
  std::vector<std::unique_ptr<Item>> items_;
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_WORKLOAD_H_

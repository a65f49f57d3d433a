// ModelRegistry: the catalogue of servable models by name — what each is, where its files are,
// its tokenizer, and a version bumped on every hot swap. It holds no device weights: each device
// loop instantiates its own copy of a model from the entry (see DeviceLoop). Thread-safe.
#ifndef TANDEM_SERVER_CORE_MODEL_REGISTRY_H_
#define TANDEM_SERVER_CORE_MODEL_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "models/model_dir.h"
#include "models/text/tokenizer.h"

namespace tandem {

// Immutable once published; shared by the service (validation, tokenizing) and device loops.
struct ModelEntry {
  std::string name;
  int64_t version = 0;  // 1 for the first publication of a name, +1 per swap
  ModelDir dir;
  std::shared_ptr<const Tokenizer> tokenizer;
  int64_t parameters = 0;
};

class ModelRegistry {
 public:
  using Listener = std::function<void(std::shared_ptr<const ModelEntry>)>;

  // Loads every subfolder of `models_dir` that holds a config.json (the folder name is the model
  // name). A folder that fails to load is an error naming it: a server must not start half-right.
  // An empty or missing models_dir gives an empty registry.
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Create(const std::string& models_dir,
                                                               const std::string& default_model);

  // Returns the entry, or NOT_FOUND listing the names that exist. An empty name selects the
  // default model of `kind`: --default_model (or the first text model by name) for text, the
  // first image model by name for images.
  absl::StatusOr<std::shared_ptr<const ModelEntry>> Lookup(
      const std::string& name, ModelKind kind = ModelKind::kText) const;
  std::vector<std::shared_ptr<const ModelEntry>> List() const;
  std::string default_model() const;  // the default text model
  std::string default_image_model() const;

  // Publishes (or hot-swaps) `name` from a model directory; listeners are told afterwards.
  absl::StatusOr<std::shared_ptr<const ModelEntry>> Publish(const std::string& name,
                                                            const std::string& path);
  void AddListener(Listener listener);

 private:
  ModelRegistry() = default;

  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<const ModelEntry>> entries_ ABSL_GUARDED_BY(mu_);
  std::string default_model_ ABSL_GUARDED_BY(mu_);
  std::string default_image_model_ ABSL_GUARDED_BY(mu_);
  void ChooseDefaultsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<Listener> listeners_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_MODEL_REGISTRY_H_

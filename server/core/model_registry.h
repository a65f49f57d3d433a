// ModelRegistry: the catalogue of servable models by name — what each is, where its files are,
// its tokenizer, a version bumped on every hot swap, and the version's instance on every device.
//
// Hot swap without a stall: Publish builds the new version whole — files read, tokenizer loaded,
// one instance (weights and KV cache or sample slots) per device — on the caller's thread, off
// every device loop, then swaps the entry in one step. A request holds the entry it was validated
// against (tokenizer and all), and a device runs it on that entry's instance for the device, so
// it runs on exactly that version; the old version lives until its last request ends.
//
// Instances are not thread-safe: the instance at devices()[i] is touched only by the device
// loop of device i. Thread-safe otherwise.
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
#include "models/image_model.h"
#include "models/model_dir.h"
#include "models/text/tokenizer.h"
#include "models/text_model.h"
#include "server/metrics/metrics.h"

namespace tandem {

// Immutable once published; shared by the service (validation, tokenizing) and device loops.
struct ModelEntry {
  std::string name;
  int64_t version = 0;  // 1 for the first publication of a name, +1 per swap
  ModelDir dir;
  std::shared_ptr<const Tokenizer> tokenizer;
  int64_t parameters = 0;
  // This version on each device, by device index (RegistryOptions::devices); the kind's vector
  // only. Null where the entry was built for other devices only.
  std::vector<std::shared_ptr<TextModel>> text;
  std::vector<std::shared_ptr<ImageModel>> image;
};

struct RegistryOptions {
  std::vector<std::string> devices = {"cpu"};
  int max_sequences = 32;  // KV slots per text model instance
  int max_images = 16;     // samples in flight per image model instance
};

// An entry for the model directory at `path` named `name` (version 0), with an instance on
// `devices` (indices into options.devices; empty: every device). For the registry, and for
// models that are served without being published (a training job's evaluation samples). Ends
// the calling thread's OpenMP team afterwards (ReleaseThreadTeam).
absl::StatusOr<std::shared_ptr<ModelEntry>> LoadModelEntry(const std::string& name,
                                                           const std::string& path,
                                                           const RegistryOptions& options,
                                                           const std::vector<int>& devices = {});

class ModelRegistry {
 public:
  using Listener = std::function<void(std::shared_ptr<const ModelEntry>)>;

  // Loads every subfolder of `models_dir` that holds a config.json (the folder name is the model
  // name). A folder that fails to load (a damaged config, weights with a lying header, the
  // wrong shapes, a truncated file) is not served, and the rest is: it is reported on stderr,
  // and Lookup of its name answers FAILED_PRECONDITION with the reason. --default_model naming
  // it is an error. An empty or missing models_dir gives an empty registry.
  // Each version's load time goes to tandem_model_load_seconds when `metrics` is given (it must
  // outlive the registry).
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Create(const std::string& models_dir,
                                                               const std::string& default_model,
                                                               RegistryOptions options = {},
                                                               Metrics* metrics = nullptr);

  // Returns the entry, FAILED_PRECONDITION for a model that failed to load (why), or NOT_FOUND
  // listing the names that exist. An empty name selects the
  // default model of `kind`: --default_model (or the first text model by name) for text, the
  // first image model by name for images.
  absl::StatusOr<std::shared_ptr<const ModelEntry>> Lookup(
      const std::string& name, ModelKind kind = ModelKind::kText) const;
  std::vector<std::shared_ptr<const ModelEntry>> List() const;
  std::string default_model() const;  // the default text model
  std::string default_image_model() const;

  // Publishes (or hot-swaps) `name` from a model directory, its instances built first (on this
  // thread); listeners are told afterwards.
  absl::StatusOr<std::shared_ptr<const ModelEntry>> Publish(const std::string& name,
                                                            const std::string& path);
  void AddListener(Listener listener);

  const RegistryOptions& options() const { return options_; }

 private:
  ModelRegistry(RegistryOptions options, Metrics* metrics)
      : options_(std::move(options)), metrics_(metrics) {}
  // LoadModelEntry, timed: reason "load" (a new name) or "swap".
  absl::StatusOr<std::shared_ptr<ModelEntry>> Load(const std::string& name,
                                                   const std::string& path, const char* reason);

  const RegistryOptions options_;
  Metrics* const metrics_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<const ModelEntry>> entries_ ABSL_GUARDED_BY(mu_);
  // Folders that failed to load at startup, and why (until a Publish of the name succeeds).
  std::map<std::string, absl::Status> unloadable_ ABSL_GUARDED_BY(mu_);
  std::string default_model_ ABSL_GUARDED_BY(mu_);
  std::string default_image_model_ ABSL_GUARDED_BY(mu_);
  void ChooseDefaultsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<Listener> listeners_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem

#endif  // TANDEM_SERVER_CORE_MODEL_REGISTRY_H_

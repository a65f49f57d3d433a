#include "server/core/model_registry.h"

#include <cstdio>
#include <filesystem>

#include "models/formats/safetensors.h"
#include "models/llama/llama.h"
#include "models/torch/work_class.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace tandem {
namespace {

// The instance of `entry` on `device`, from the weights file.
template <typename Model, typename Create>
absl::StatusOr<std::shared_ptr<Model>> BuildInstance(const ModelEntry& entry,
                                                     const TensorMap& weights,
                                                     const std::string& device, Create&& create) {
  absl::StatusOr<std::unique_ptr<Model>> model = create(weights);
  if (!model.ok()) {
    return absl::Status(model.status().code(),
                        absl::StrCat("model \"", entry.name, "\" on ", device, ": ",
                                     model.status().message()));
  }
  return std::shared_ptr<Model>(*std::move(model));
}

absl::Status BuildInstances(ModelEntry& entry, const RegistryOptions& options,
                            const std::vector<int>& devices) {
  absl::StatusOr<SafetensorsFile> weights = ReadSafetensors(entry.dir.weights_path());
  if (!weights.ok()) return weights.status();
  const bool text = entry.dir.kind == ModelKind::kText;
  entry.text.assign(text ? options.devices.size() : 0, nullptr);
  entry.image.assign(text ? 0 : options.devices.size(), nullptr);
  for (int i : devices) {
    const std::string& device = options.devices[i];
    if (text) {
      const TextModelOptions mo{device, options.max_sequences};
      absl::StatusOr<std::shared_ptr<TextModel>> m = BuildInstance<TextModel>(
          entry, weights->tensors, device,
          [&](const TensorMap& w) { return CreateLlamaModel(entry.dir.llama, w, mo); });
      if (!m.ok()) return m.status();
      entry.text[i] = *std::move(m);
    } else {
      const ImageModelOptions mo{device, options.max_images};
      absl::StatusOr<std::shared_ptr<ImageModel>> m = BuildInstance<ImageModel>(
          entry, weights->tensors, device,
          [&](const TensorMap& w) { return CreateDiffusionModel(entry.dir.diffusion, w, mo); });
      if (!m.ok()) return m.status();
      entry.image[i] = *std::move(m);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<ModelEntry>> BuildModelEntry(const std::string& name,
                                                            const std::string& path,
                                                            const RegistryOptions& options,
                                                            const std::vector<int>& devices) {
  absl::StatusOr<ModelDir> dir = ReadModelDir(path);
  if (!dir.ok()) return dir.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadModelTokenizer(*dir);
  if (!tok.ok()) return tok.status();
  const int model_vocab =
      dir->kind == ModelKind::kText ? dir->llama.vocab_size : dir->diffusion.vocab_size;
  if ((*tok)->vocab_size() > model_vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", name, ": tokenizer has ", (*tok)->vocab_size(), " pieces but the model's ",
        "vocab_size is ", model_vocab));
  }
  auto entry = std::make_shared<ModelEntry>();
  entry->name = name;
  entry->dir = *std::move(dir);
  entry->tokenizer = std::move(*tok);
  entry->parameters = entry->dir.kind == ModelKind::kText ? entry->dir.llama.ParameterCount()
                                                          : entry->dir.diffusion.ParameterCount();
  std::vector<int> all;
  for (int i = 0; i < static_cast<int>(options.devices.size()); ++i) all.push_back(i);
  if (absl::Status s = BuildInstances(*entry, options, devices.empty() ? all : devices);
      !s.ok()) {
    return s;
  }
  return entry;
}

}  // namespace

absl::StatusOr<std::shared_ptr<ModelEntry>> LoadModelEntry(const std::string& name,
                                                           const std::string& path,
                                                           const RegistryOptions& options,
                                                           const std::vector<int>& devices) {
  auto entry = BuildModelEntry(name, path, options, devices);
  // Building ran LibTorch work on the calling thread (startup, a reload, a deploy, a job's
  // evaluation samples), which goes on to other things: its idle OpenMP team would count against
  // the cores for the thread's life (see ReleaseThreadTeam).
  ReleaseThreadTeam();
  return entry;
}

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Create(
    const std::string& models_dir, const std::string& default_model, RegistryOptions options,
    Metrics* metrics) {
  if (options.devices.empty()) return absl::InvalidArgumentError("no devices given");
  if (options.max_sequences < 1) return absl::InvalidArgumentError("max_sequences must be >= 1");
  if (options.max_images < 1) return absl::InvalidArgumentError("max_images must be >= 1");
  std::unique_ptr<ModelRegistry> registry(new ModelRegistry(std::move(options), metrics));
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!models_dir.empty() && fs::is_directory(models_dir, ec)) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(models_dir, ec)) {
      if (e.is_directory() && fs::exists(e.path() / kConfigFile)) {
        names.push_back(e.path().filename().string());
      }
    }
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      auto entry = registry->Load(name, models_dir + "/" + name, "load");
      absl::MutexLock lock(&registry->mu_);
      if (!entry.ok()) {
        const absl::Status why(entry.status().code(),
                               absl::StrCat("loading model \"", name, "\": ",
                                            entry.status().message()));
        std::fprintf(stderr, "tandemd: not serving model \"%s\": %s\n", name.c_str(),
                     std::string(why.message()).c_str());
        registry->unloadable_[name] = why;
        continue;
      }
      (*entry)->version = 1;
      registry->entries_[name] = *std::move(entry);
    }
  } else if (!models_dir.empty() && fs::exists(models_dir)) {
    return absl::InvalidArgumentError(absl::StrCat("--models_dir ", models_dir,
                                                   " is not a directory"));
  }
  absl::MutexLock lock(&registry->mu_);
  if (!default_model.empty()) {
    auto it = registry->entries_.find(default_model);
    if (auto bad = registry->unloadable_.find(default_model); bad != registry->unloadable_.end()) {
      return absl::Status(bad->second.code(), absl::StrCat("--default_model: ", bad->second.message()));
    }
    if (it == registry->entries_.end()) {
      return absl::NotFoundError(absl::StrCat("--default_model=", default_model,
                                              " is not a model in ", models_dir));
    }
    if (it->second->dir.kind != ModelKind::kText) {
      return absl::InvalidArgumentError(absl::StrCat("--default_model=", default_model,
                                                     " is an image model; name a text model"));
    }
    registry->default_model_ = default_model;
  }
  registry->ChooseDefaultsLocked();
  return registry;
}

void ModelRegistry::ChooseDefaultsLocked() {
  for (const auto& [n, e] : entries_) {
    if (e->dir.kind == ModelKind::kText && default_model_.empty()) default_model_ = n;
    if (e->dir.kind == ModelKind::kImage && default_image_model_.empty()) {
      default_image_model_ = n;
    }
  }
}

absl::StatusOr<std::shared_ptr<const ModelEntry>> ModelRegistry::Lookup(const std::string& name,
                                                                        ModelKind kind) const {
  absl::MutexLock lock(&mu_);
  const std::string& key =
      !name.empty() ? name : kind == ModelKind::kText ? default_model_ : default_image_model_;
  auto it = entries_.find(key);
  if (it != entries_.end()) return it->second;
  if (auto bad = unloadable_.find(key); bad != unloadable_.end()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model \"", key, "\" is not served: ", bad->second.message(),
        " (fix its folder and restart tandemd, or deploy it again)"));
  }
  std::vector<std::string> names;
  for (const auto& [n, e] : entries_) names.push_back(n);
  if (name.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "no model given and the server has no ", kind == ModelKind::kText ? "text" : "image",
        " model; start tandemd with --models_dir containing one"));
  }
  return absl::NotFoundError(absl::StrCat(
      "unknown model \"", name, "\"; available: ",
      names.empty() ? std::string("(none)") : absl::StrJoin(names, ", ")));
}

std::vector<std::shared_ptr<const ModelEntry>> ModelRegistry::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<const ModelEntry>> out;
  for (const auto& [n, e] : entries_) out.push_back(e);
  return out;
}

std::string ModelRegistry::default_model() const {
  absl::MutexLock lock(&mu_);
  return default_model_;
}

std::string ModelRegistry::default_image_model() const {
  absl::MutexLock lock(&mu_);
  return default_image_model_;
}

absl::StatusOr<std::shared_ptr<const ModelEntry>> ModelRegistry::Publish(
    const std::string& name, const std::string& path) {
  bool served;
  {
    absl::MutexLock lock(&mu_);
    served = entries_.count(name) > 0;
  }
  auto entry = Load(name, path, served ? "swap" : "load");
  if (!entry.ok()) return entry.status();
  std::vector<Listener> listeners;
  std::shared_ptr<const ModelEntry> published;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(name);
    (*entry)->version = it == entries_.end() ? 1 : it->second->version + 1;
    published = *entry;
    entries_[name] = published;
    unloadable_.erase(name);
    ChooseDefaultsLocked();
    listeners = listeners_;
  }
  for (auto& l : listeners) l(published);
  return published;
}

absl::StatusOr<std::shared_ptr<ModelEntry>> ModelRegistry::Load(const std::string& name,
                                                                 const std::string& path,
                                                                 const char* reason) {
  const absl::Time t0 = absl::Now();
  auto entry = LoadModelEntry(name, path, options_);
  if (entry.ok() && metrics_) {
    metrics_->model_load_seconds.Add({{"model", name}, {"reason", reason}}, Metrics::LoadBuckets())
        .Observe(absl::ToDoubleSeconds(absl::Now() - t0));
  }
  return entry;
}

void ModelRegistry::AddListener(Listener listener) {
  absl::MutexLock lock(&mu_);
  listeners_.push_back(std::move(listener));
}

}  // namespace tandem

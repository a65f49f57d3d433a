#include "server/core/model_registry.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tandem {
namespace {

absl::StatusOr<std::shared_ptr<ModelEntry>> LoadEntry(const std::string& name,
                                                      const std::string& path) {
  absl::StatusOr<ModelDir> dir = ReadModelDir(path);
  if (!dir.ok()) return dir.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load(dir->tokenizer_path());
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
  return entry;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Create(
    const std::string& models_dir, const std::string& default_model) {
  std::unique_ptr<ModelRegistry> registry(new ModelRegistry());
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
      auto entry = LoadEntry(name, models_dir + "/" + name);
      if (!entry.ok()) {
        return absl::Status(entry.status().code(),
                            absl::StrCat("loading model \"", name, "\": ",
                                         entry.status().message()));
      }
      (*entry)->version = 1;
      absl::MutexLock lock(&registry->mu_);
      registry->entries_[name] = *std::move(entry);
    }
  } else if (!models_dir.empty() && fs::exists(models_dir)) {
    return absl::InvalidArgumentError(absl::StrCat("--models_dir ", models_dir,
                                                   " is not a directory"));
  }
  absl::MutexLock lock(&registry->mu_);
  if (!default_model.empty()) {
    auto it = registry->entries_.find(default_model);
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
  auto entry = LoadEntry(name, path);
  if (!entry.ok()) return entry.status();
  std::vector<Listener> listeners;
  std::shared_ptr<const ModelEntry> published;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(name);
    (*entry)->version = it == entries_.end() ? 1 : it->second->version + 1;
    published = *entry;
    entries_[name] = published;
    ChooseDefaultsLocked();
    listeners = listeners_;
  }
  for (auto& l : listeners) l(published);
  return published;
}

void ModelRegistry::AddListener(Listener listener) {
  absl::MutexLock lock(&mu_);
  listeners_.push_back(std::move(listener));
}

}  // namespace tandem

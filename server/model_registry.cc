#include "server/model_registry.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tandem {
namespace {

absl::StatusOr<std::shared_ptr<ModelEntry>> LoadEntry(const std::string& name,
                                                      const std::string& path) {
  absl::StatusOr<ModelDir> dir = ReadModelDir(path);
  if (!dir.ok()) return dir.status();
  if (dir->kind != ModelKind::kText) {
    return absl::UnimplementedError(
        absl::StrCat("model ", name, " at ", path, " is an image model; this server build ",
                     "serves text models only"));
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load(dir->tokenizer_path());
  if (!tok.ok()) return tok.status();
  if ((*tok)->vocab_size() > dir->llama.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", name, ": tokenizer has ", (*tok)->vocab_size(), " pieces but the model's ",
        "vocab_size is ", dir->llama.vocab_size));
  }
  auto entry = std::make_shared<ModelEntry>();
  entry->name = name;
  entry->dir = *std::move(dir);
  entry->tokenizer = std::move(*tok);
  entry->parameters = entry->dir.llama.ParameterCount();
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
    if (!registry->entries_.count(default_model)) {
      return absl::NotFoundError(absl::StrCat("--default_model=", default_model,
                                              " is not a model in ", models_dir));
    }
    registry->default_model_ = default_model;
  } else if (!registry->entries_.empty()) {
    registry->default_model_ = registry->entries_.begin()->first;
  }
  return registry;
}

absl::StatusOr<std::shared_ptr<const ModelEntry>> ModelRegistry::Lookup(
    const std::string& name) const {
  absl::MutexLock lock(&mu_);
  const std::string& key = name.empty() ? default_model_ : name;
  auto it = entries_.find(key);
  if (it != entries_.end()) return it->second;
  std::vector<std::string> names;
  for (const auto& [n, e] : entries_) names.push_back(n);
  if (name.empty()) {
    return absl::NotFoundError("no model given and the server has no default model; "
                               "start tandemd with --models_dir containing a model");
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
    if (default_model_.empty()) default_model_ = name;
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

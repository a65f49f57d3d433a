#include "trainer/data/image_data.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

// Phrasings of each class in the caption corpus (FashionMnistCaption cycles through its own).
constexpr uint64_t kCorpusVariants = 16;

// An image folder (metadata.jsonl): every k-th image held out, deterministic and spread over it.
absl::StatusOr<ImageData> LoadFolderData(const std::string& path, double holdout_fraction,
                                         const std::string& root) {
  absl::StatusOr<std::unique_ptr<ImageDataset>> set = LoadImageFolder(path, root);
  if (!set.ok()) return set.status();
  ImageData d;
  d.train_set = d.heldout_set = std::shared_ptr<const ImageDataset>(*std::move(set));
  const int64_t k =
      holdout_fraction > 0 ? std::max<int64_t>(2, std::llround(1.0 / holdout_fraction)) : 0;
  for (int64_t i = 0; i < d.train_set->size(); ++i) {
    (k > 0 && i % k == k - 1 ? d.heldout : d.train).push_back(i);
  }
  if (d.train.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no images left to train on"));
  }
  if (d.heldout.empty()) d.heldout = d.train;  // too small to hold any out: evaluate on train
  return d;
}

std::vector<int64_t> AllIndices(const ImageDataset& set) {
  std::vector<int64_t> out(set.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<int64_t>(i);
  return out;
}

// Fashion-MNIST: its own train and test splits.
absl::StatusOr<ImageData> LoadFashionMnistData(const std::string& path, const std::string& root) {
  absl::StatusOr<std::unique_ptr<ImageDataset>> train = LoadFashionMnist(path, "train", root);
  if (!train.ok()) return train.status();
  absl::StatusOr<std::unique_ptr<ImageDataset>> test = LoadFashionMnist(path, "test", root);
  if (!test.ok()) return test.status();
  ImageData d;
  d.train_set = *std::move(train);
  d.heldout_set = *std::move(test);
  d.train = AllIndices(*d.train_set);
  d.heldout = AllIndices(*d.heldout_set);
  d.fashion_mnist = true;
  return d;
}

}  // namespace

absl::StatusOr<ImageData> LoadImageData(const std::string& path, double holdout_fraction,
                                        const std::string& root) {
  std::error_code ec;
  if (fs::exists(fs::path(path) / "metadata.jsonl", ec)) {
    return LoadFolderData(path, holdout_fraction, root);
  }
  if (!fs::exists(fs::path(path) / "train-images-idx3-ubyte.gz", ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset ", path,
                     " is neither an image folder (metadata.jsonl beside the images) nor "
                     "Fashion-MNIST (train-images-idx3-ubyte.gz, ...)"));
  }
  return LoadFashionMnistData(path, root);
}

std::string FashionMnistCaptionCorpus() {
  std::string text;
  for (int label = 0; label < static_cast<int>(FashionMnistClasses().size()); ++label) {
    for (uint64_t variant = 0; variant < kCorpusVariants; ++variant) {
      absl::StrAppend(&text, FashionMnistCaption(label, variant), "\n");
    }
  }
  return text;
}

absl::Status WriteCaptionCorpus(const ImageData& data, const std::string& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (data.fashion_mnist) {
    out << FashionMnistCaptionCorpus();
  } else {
    for (int64_t i : data.train) {
      out << absl::StrReplaceAll(data.train_set->Get(i, 0).caption, {{"\n", " "}, {"\r", " "}})
          << "\n";
    }
  }
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace tandem

// The images of an image training job: its dataset split into the images it trains on and the
// images it holds out for evaluation, and the caption corpus its tokenizer is trained on.
// Torch-free.
//   - A Fashion-MNIST IDX folder: the train split for training, the test split held out.
//   - An image folder with metadata.jsonl: every round(1 / holdout_fraction)-th image (at least
//     every 2nd) held out; none when holdout_fraction is 0, and then (or when the folder is too
//     small to hold any out) evaluation uses the training images.
#ifndef TANDEM_TRAINER_DATA_IMAGE_DATA_H_
#define TANDEM_TRAINER_DATA_IMAGE_DATA_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/data/image_dataset.h"

namespace tandem {

// Immutable once loaded; the datasets are shared (an image folder serves both splits).
struct ImageData {
  std::shared_ptr<const ImageDataset> train_set, heldout_set;
  std::vector<int64_t> train, heldout;  // indices into train_set, heldout_set
  bool fashion_mnist = false;
};

// INVALID_ARGUMENT when `path` is neither kind of dataset, or an image folder leaves no image to
// train on; the datasets' own errors (NOT_FOUND, DATA_LOSS, ...) otherwise. Files are read
// beneath `root` when it is set (image_dataset.h).
absl::StatusOr<ImageData> LoadImageData(const std::string& path, double holdout_fraction,
                                        const std::string& root = "");

// Every phrasing of every Fashion-MNIST class, one a line: the captions that dataset produces.
std::string FashionMnistCaptionCorpus();

// Writes the captions the job's tokenizer is trained on to `path`, one a line: the Fashion-MNIST
// corpus above, or the (first-phrasing) captions of the folder's training images.
absl::Status WriteCaptionCorpus(const ImageData& data, const std::string& path);

}  // namespace tandem

#endif  // TANDEM_TRAINER_DATA_IMAGE_DATA_H_

// Captioned image datasets for training the diffusion model. Torch-free: images come out as 8-bit
// pixels with a caption; the trainer turns them into tensors.
//   - Fashion-MNIST (Debian's dataset-fashion-mnist): a folder with the IDX gz files
//     {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz; captions from the class names through a few
//     phrasings ("a photo of an ankle boot", "an ankle boot", ...).
//   - An image folder in Hugging Face's imagefolder layout: metadata.jsonl lines
//     {"file_name": "x.png", "text": "a caption"} beside PNG files.
#ifndef TANDEM_TRAINER_DATA_IMAGE_DATASET_H_
#define TANDEM_TRAINER_DATA_IMAGE_DATASET_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/formats/png.h"

namespace tandem {

struct CaptionedImage {
  RawImage image;
  std::string caption;
  int label = -1;  // class index where the dataset has one
};

class ImageDataset {
 public:
  virtual ~ImageDataset() = default;
  virtual int64_t size() const = 0;
  virtual int width() const = 0;
  virtual int height() const = 0;
  virtual int channels() const = 0;
  // The i-th example; `variant` picks among caption phrasings deterministically.
  virtual CaptionedImage Get(int64_t index, uint64_t variant) const = 0;
};

// The ten Fashion-MNIST class names, index = label.
const std::vector<std::string>& FashionMnistClasses();
// A caption for class `label`: phrasing `variant % number of phrasings`.
std::string FashionMnistCaption(int label, uint64_t variant);

// Both loaders read every file beneath `root` when it is set (base/confined_open.h: a symlink
// leading out fails the open, PERMISSION_DENIED); empty: unconfined.
//
// split: "train" (60k) or "test" (10k). NOT_FOUND naming the missing file, DATA_LOSS for a
// corrupt or truncated file.
absl::StatusOr<std::unique_ptr<ImageDataset>> LoadFashionMnist(const std::string& dir,
                                                               const std::string& split,
                                                               const std::string& root = "");
// All images must share one size and channel count (INVALID_ARGUMENT otherwise).
absl::StatusOr<std::unique_ptr<ImageDataset>> LoadImageFolder(const std::string& dir,
                                                              const std::string& root = "");

}  // namespace tandem

#endif  // TANDEM_TRAINER_DATA_IMAGE_DATASET_H_

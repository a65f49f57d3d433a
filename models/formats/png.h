// PNG encoding and decoding (libpng), 8-bit grey, grey+alpha, RGB or RGBA. Torch-free.
#ifndef TANDEM_MODELS_FORMATS_PNG_H_
#define TANDEM_MODELS_FORMATS_PNG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tandem {

struct RawImage {
  int width = 0;
  int height = 0;
  int channels = 0;             // 1, 2, 3 or 4
  std::vector<uint8_t> pixels;  // height x width x channels, row-major
};

// INVALID_ARGUMENT if the sizes do not match.
absl::StatusOr<std::string> EncodePng(const RawImage& image);
// Any PNG (palette, 16-bit, interlaced...) comes back as 8-bit with 1-4 channels.
// INVALID_ARGUMENT for bytes that are not a valid PNG.
absl::StatusOr<RawImage> DecodePng(const std::string& png);

// Images side by side in a grid (cols per row), all of the same size and channels.
absl::StatusOr<RawImage> TileImages(const std::vector<RawImage>& images, int cols);
// Nearest-neighbour resize, e.g. for previews.
RawImage ResizeNearest(const RawImage& image, int width, int height);

}  // namespace tandem

#endif  // TANDEM_MODELS_FORMATS_PNG_H_

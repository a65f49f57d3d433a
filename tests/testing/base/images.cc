#include "tests/testing/base/images.h"

#include <cstddef>
#include <cstdint>

namespace tandem::testing {

RawImage PatternImage(int width, int height, int channels, int seed) {
  RawImage im;
  im.width = width;
  im.height = height;
  im.channels = channels;
  im.pixels.resize(static_cast<size_t>(width) * height * channels);
  for (size_t i = 0; i < im.pixels.size(); ++i) {
    im.pixels[i] = static_cast<uint8_t>((i * 37 + seed * 101 + i / 7) % 256);
  }
  return im;
}

}  // namespace tandem::testing

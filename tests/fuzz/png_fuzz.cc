// The PNG reader (libpng behind models/formats/png) on arbitrary bytes: a status or an image
// whose pixel buffer matches its size.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "models/formats/png.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<tandem::RawImage> image =
      tandem::DecodePng(std::string(reinterpret_cast<const char*>(data), size));
  if (!image.ok()) return 0;
  if (image->pixels.size() != static_cast<size_t>(image->width) * image->height * image->channels) {
    std::abort();
  }
  return 0;
}

#include "models/formats/png.h"

#include <png.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

// libpng's simplified API (png_image_*) runs every libpng call under its own setjmp guard
// (png_safe_execute) and reports failures as a 0 return with image.message set, so libpng never
// longjmps through the C++ frames here.

namespace tandem {
namespace {

// A decode bomb (a tiny file claiming a huge canvas) must fail cleanly instead of throwing
// std::bad_alloc; 1 GiB of 8-bit pixels is far above anything this project trains or serves.
constexpr uint64_t kMaxDecodedBytes = uint64_t{1} << 30;

// Frees libpng's per-image state on every path (png_image_free is a no-op once freed).
class PngImageGuard {
 public:
  explicit PngImageGuard(png_image* image) : image_(image) {}
  ~PngImageGuard() { png_image_free(image_); }
  PngImageGuard(const PngImageGuard&) = delete;
  PngImageGuard& operator=(const PngImageGuard&) = delete;

 private:
  png_image* image_;
};

png_uint_32 FormatForChannels(int channels) {
  switch (channels) {
    case 1:
      return PNG_FORMAT_GRAY;
    case 2:
      return PNG_FORMAT_GA;
    case 3:
      return PNG_FORMAT_RGB;
    default:
      return PNG_FORMAT_RGBA;
  }
}

int ChannelsOfFormat(png_uint_32 format) {
  return ((format & PNG_FORMAT_FLAG_COLOR) ? 3 : 1) + ((format & PNG_FORMAT_FLAG_ALPHA) ? 1 : 0);
}

// Sizes consistent and non-empty; the pixel count computed without overflow.
absl::Status ValidateImage(const RawImage& image, const char* what) {
  if (image.width <= 0 || image.height <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": width and height must be positive, got ",
                                                   image.width, "x", image.height));
  }
  if (image.channels < 1 || image.channels > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": channels must be 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA), got ",
                     image.channels));
  }
  const uint64_t expected = static_cast<uint64_t>(image.width) *
                            static_cast<uint64_t>(image.height) *
                            static_cast<uint64_t>(image.channels);
  if (image.pixels.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": a ", image.width, "x", image.height, "x", image.channels, " image needs ",
        expected, " bytes of pixels, got ", image.pixels.size()));
  }
  return absl::OkStatus();
}

// Walks the chunk list up to IEND. libpng's simplified reader stops after the image data and
// never looks at IEND, so without this a file cut short in its last bytes would decode as whole.
absl::Status CheckChunksReachIend(const std::string& png) {
  auto be32 = [&](size_t at) {
    const auto* p = reinterpret_cast<const unsigned char*>(png.data()) + at;
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
  };
  size_t pos = 8;  // after the signature
  while (png.size() - pos >= 12) {
    const uint32_t length = be32(pos);
    if (length > 0x7fffffffu) {
      return absl::InvalidArgumentError(
          absl::StrCat("DecodePng: corrupt PNG: chunk length ", length, " at byte ", pos));
    }
    if (png.size() - pos - 12 < length) break;  // the chunk runs past the end
    if (png.compare(pos + 4, 4, "IEND") == 0) return absl::OkStatus();
    pos += 12 + static_cast<size_t>(length);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "DecodePng: truncated PNG: ", png.size(), " bytes end before the IEND chunk"));
}

}  // namespace

absl::StatusOr<std::string> EncodePng(const RawImage& image) {
  if (absl::Status s = ValidateImage(image, "EncodePng"); !s.ok()) return s;
  // PNG stores dimensions and the row stride (png_int_32 here) in 31 bits.
  if (static_cast<uint64_t>(image.width) * image.channels > 0x7fffffffu) {
    return absl::InvalidArgumentError(
        absl::StrCat("EncodePng: a row of ", image.width, " pixels is too wide for PNG"));
  }

  png_image png;
  auto init = [&] {
    std::memset(&png, 0, sizeof(png));
    png.version = PNG_IMAGE_VERSION;
    png.width = static_cast<png_uint_32>(image.width);
    png.height = static_cast<png_uint_32>(image.height);
    png.format = FormatForChannels(image.channels);
  };
  init();
  PngImageGuard guard(&png);

  // One compression pass: start from libpng's worst-case bound and shrink afterwards; retry only
  // if libpng reports the bound was short.
  png_alloc_size_t capacity = PNG_IMAGE_PNG_SIZE_MAX(png);
  std::string out;
  for (int attempt = 0; attempt < 2; ++attempt) {
    out.resize(capacity);
    png_alloc_size_t bytes = capacity;
    if (png_image_write_to_memory(&png, out.data(), &bytes, /*convert_to_8_bit=*/0,
                                  image.pixels.data(), /*row_stride=*/0,
                                  /*colormap=*/nullptr)) {
      out.resize(bytes);
      return out;
    }
    if (bytes <= capacity) {
      return absl::InternalError(absl::StrCat("EncodePng: libpng failed: ", png.message));
    }
    capacity = bytes;  // the buffer was too small; libpng told us how much it needs
    png_image_free(&png);
    init();
  }
  return absl::InternalError("EncodePng: libpng kept asking for a larger output buffer");
}

absl::StatusOr<RawImage> DecodePng(const std::string& png_bytes) {
  if (png_bytes.size() < 8 || png_sig_cmp(reinterpret_cast<png_const_bytep>(png_bytes.data()),
                                          0, 8) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodePng: not a PNG (", png_bytes.size(),
                     " bytes without the 8-byte PNG signature)"));
  }
  if (absl::Status s = CheckChunksReachIend(png_bytes); !s.ok()) return s;
  png_image png;
  std::memset(&png, 0, sizeof(png));
  png.version = PNG_IMAGE_VERSION;
  PngImageGuard guard(&png);
  if (!png_image_begin_read_from_memory(&png, png_bytes.data(), png_bytes.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodePng: invalid PNG header: ", png.message));
  }
  // Keep the file's channel layout (grey stays grey; a palette becomes RGB, or RGBA with tRNS),
  // but always 8-bit, direct colour. 16-bit files without gamma information are taken as sRGB
  // (libpng would otherwise assume linear and gamma-encode them, changing mid-tones).
  png.format &= PNG_FORMAT_FLAG_COLOR | PNG_FORMAT_FLAG_ALPHA;
  png.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;

  if (png.width == 0 || png.height == 0 || png.width > 0x7fffffffu || png.height > 0x7fffffffu) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodePng: invalid dimensions ", png.width, "x", png.height));
  }
  RawImage out;
  out.width = static_cast<int>(png.width);
  out.height = static_cast<int>(png.height);
  out.channels = ChannelsOfFormat(png.format);
  const uint64_t bytes = static_cast<uint64_t>(png.width) * png.height * out.channels;
  if (bytes > kMaxDecodedBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DecodePng: a ", png.width, "x", png.height, "x", out.channels, " image (", bytes,
        " bytes) exceeds the ", kMaxDecodedBytes, "-byte decode limit"));
  }
  out.pixels.resize(bytes);
  if (!png_image_finish_read(&png, /*background=*/nullptr, out.pixels.data(), /*row_stride=*/0,
                             /*colormap=*/nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodePng: corrupt or truncated PNG: ", png.message));
  }
  return out;
}

absl::StatusOr<RawImage> TileImages(const std::vector<RawImage>& images, int cols) {
  if (images.empty()) return absl::InvalidArgumentError("TileImages: no images to tile");
  if (cols < 1) {
    return absl::InvalidArgumentError(absl::StrCat("TileImages: cols must be >= 1, got ", cols));
  }
  const RawImage& first = images.front();
  for (size_t i = 0; i < images.size(); ++i) {
    const RawImage& im = images[i];
    if (absl::Status s = ValidateImage(im, "TileImages"); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(s.message(), " (image ", i, ")"));
    }
    if (im.width != first.width || im.height != first.height || im.channels != first.channels) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TileImages: image ", i, " is ", im.width, "x", im.height, "x", im.channels,
          " but image 0 is ", first.width, "x", first.height, "x", first.channels,
          "; all tiles must share size and channels"));
    }
  }
  // Exactly `cols` columns (the caller's layout), as many rows as needed; cells past the last
  // image stay 0.
  const int64_t n = static_cast<int64_t>(images.size());
  const int64_t grid_cols = cols;
  const int64_t grid_rows = (n + grid_cols - 1) / grid_cols;
  const int64_t out_w = grid_cols * first.width;
  const int64_t out_h = grid_rows * first.height;
  if (out_w > 0x7fffffff || out_h > 0x7fffffff ||
      static_cast<uint64_t>(out_w) * out_h * first.channels > kMaxDecodedBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("TileImages: a ", out_w, "x", out_h, " grid is too large"));
  }

  RawImage out;
  out.width = static_cast<int>(out_w);
  out.height = static_cast<int>(out_h);
  out.channels = first.channels;
  out.pixels.assign(static_cast<size_t>(out_w * out_h * first.channels), 0);  // empty cells: 0
  const size_t tile_row = static_cast<size_t>(first.width) * first.channels;
  const size_t out_row = static_cast<size_t>(out_w) * first.channels;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t gx = i % grid_cols;
    const int64_t gy = i / grid_cols;
    const uint8_t* src = images[i].pixels.data();
    uint8_t* dst = out.pixels.data() + static_cast<size_t>(gy) * first.height * out_row +
                   static_cast<size_t>(gx) * tile_row;
    for (int y = 0; y < first.height; ++y) {
      std::memcpy(dst + y * out_row, src + y * tile_row, tile_row);
    }
  }
  return out;
}

RawImage ResizeNearest(const RawImage& image, int width, int height) {
  RawImage out;
  out.channels = image.channels;
  // Bad input or target gives an empty image, which EncodePng and friends reject with a message.
  if (width <= 0 || height <= 0 || !ValidateImage(image, "ResizeNearest").ok()) return out;
  if (width == image.width && height == image.height) return image;
  out.width = width;
  out.height = height;
  const int c = image.channels;
  out.pixels.resize(static_cast<size_t>(width) * height * c);
  // Sample at pixel centres: source x = floor((x + 0.5) * src_w / dst_w), so an integer upscale
  // repeats each pixel exactly and a downscale picks evenly spread pixels.
  std::vector<size_t> src_x(static_cast<size_t>(width));
  for (int x = 0; x < width; ++x) {
    src_x[x] = static_cast<size_t>((2 * int64_t{x} + 1) * image.width / (2 * int64_t{width})) * c;
  }
  for (int y = 0; y < height; ++y) {
    const int64_t sy = (2 * int64_t{y} + 1) * image.height / (2 * int64_t{height});
    const uint8_t* src_row = image.pixels.data() + static_cast<size_t>(sy) * image.width * c;
    uint8_t* dst = out.pixels.data() + static_cast<size_t>(y) * width * c;
    for (int x = 0; x < width; ++x) {
      std::memcpy(dst + static_cast<size_t>(x) * c, src_row + src_x[x], c);
    }
  }
  return out;
}

}  // namespace tandem

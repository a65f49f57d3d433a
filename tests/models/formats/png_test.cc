#include "models/formats/png.h"

#include <zlib.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "tests/testing/base/images.h"
#include "tests/testing/base/matchers.h"

namespace tandem {
namespace {

using testing::Contains;

using testing::PatternImage;

RawImage Solid(int width, int height, int channels, uint8_t value) {
  RawImage im;
  im.width = width;
  im.height = height;
  im.channels = channels;
  im.pixels.assign(static_cast<size_t>(width) * height * channels, value);
  return im;
}

// --- a tiny PNG writer of our own, for formats the simplified write API cannot produce ---------

void PutBigEndian32(std::string* s, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) s->push_back(static_cast<char>((v >> shift) & 0xff));
}

void PutChunk(std::string* png, const char* type, const std::string& data) {
  PutBigEndian32(png, static_cast<uint32_t>(data.size()));
  std::string body = std::string(type, 4) + data;
  png->append(body);
  PutBigEndian32(png, static_cast<uint32_t>(
                          crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())));
}

// `rows` are the unfiltered scanlines (filter byte 0 is added here).
std::string HandMadePng(int width, int height, int bit_depth, int color_type,
                        const std::vector<std::string>& rows,
                        const std::vector<std::pair<const char*, std::string>>& extra_chunks) {
  std::string png("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  PutBigEndian32(&ihdr, width);
  PutBigEndian32(&ihdr, height);
  ihdr.push_back(static_cast<char>(bit_depth));
  ihdr.push_back(static_cast<char>(color_type));
  ihdr.append(3, '\0');  // deflate, adaptive filtering, no interlace
  PutChunk(&png, "IHDR", ihdr);
  for (const auto& [type, data] : extra_chunks) PutChunk(&png, type, data);
  std::string raw;
  for (const std::string& row : rows) raw += std::string(1, '\0') + row;
  uLongf size = compressBound(raw.size());
  std::string z(size, '\0');
  EXPECT_EQ(compress(reinterpret_cast<Bytef*>(z.data()), &size,
                     reinterpret_cast<const Bytef*>(raw.data()), raw.size()),
            Z_OK);
  z.resize(size);
  PutChunk(&png, "IDAT", z);
  PutChunk(&png, "IEND", "");
  return png;
}

// --- EncodePng / DecodePng ----------------------------------------------------------------------

TEST(PngTest, RoundTripsOneToFourChannelsExactly) {
  for (int channels = 1; channels <= 4; ++channels) {
    const RawImage im = PatternImage(17, 13, channels, channels);
    absl::StatusOr<std::string> png = EncodePng(im);
    ASSERT_TRUE(png.ok()) << png.status();
    EXPECT_EQ(png->substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
    absl::StatusOr<RawImage> back = DecodePng(*png);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->width, 17);
    EXPECT_EQ(back->height, 13);
    EXPECT_EQ(back->channels, channels);
    EXPECT_EQ(back->pixels, im.pixels) << channels << " channels";
  }
}

TEST(PngTest, RoundTripsOnePixelAndWideImages) {
  for (const RawImage& im :
       {PatternImage(1, 1, 3), PatternImage(300, 2, 1), PatternImage(2, 300, 4)}) {
    absl::StatusOr<std::string> png = EncodePng(im);
    ASSERT_TRUE(png.ok()) << png.status();
    absl::StatusOr<RawImage> back = DecodePng(*png);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->pixels, im.pixels);
  }
}

TEST(PngTest, EncodeRejectsInconsistentSizes) {
  RawImage short_pixels = PatternImage(4, 4, 3);
  short_pixels.pixels.pop_back();
  RawImage zero_width = PatternImage(4, 4, 1);
  zero_width.width = 0;
  RawImage negative = PatternImage(4, 4, 1);
  negative.height = -4;
  negative.width = -4;
  RawImage no_channels = PatternImage(4, 4, 1);
  no_channels.channels = 0;
  RawImage five_channels = PatternImage(4, 4, 1);
  five_channels.channels = 5;
  for (const RawImage& im : {short_pixels, zero_width, negative, no_channels, five_channels,
                             RawImage{}}) {
    absl::StatusOr<std::string> png = EncodePng(im);
    EXPECT_EQ(png.status().code(), absl::StatusCode::kInvalidArgument)
        << im.width << "x" << im.height << "x" << im.channels;
  }
  EXPECT_TRUE(Contains(std::string(EncodePng(short_pixels).status().message()), "needs 48"));
}

TEST(PngTest, DecodeRejectsGarbage) {
  for (const std::string& bytes :
       {std::string(), std::string("hello"), std::string("\x89PNG\r\n\x1a\n", 8),
        std::string("\x89PNG\r\n\x1a\n", 8) + std::string(100, 'x'), std::string(1000, '\0')}) {
    absl::StatusOr<RawImage> im = DecodePng(bytes);
    EXPECT_EQ(im.status().code(), absl::StatusCode::kInvalidArgument) << bytes.size();
  }
}

TEST(PngTest, DecodeRejectsEveryTruncation) {
  absl::StatusOr<std::string> png = EncodePng(PatternImage(9, 7, 3));
  ASSERT_TRUE(png.ok());
  for (size_t n = 0; n < png->size(); ++n) {
    absl::StatusOr<RawImage> im = DecodePng(png->substr(0, n));
    EXPECT_EQ(im.status().code(), absl::StatusCode::kInvalidArgument) << "first " << n << " bytes";
  }
}

TEST(PngTest, DecodeSurvivesFlippedBytes) {
  // A flip in an ancillary chunk may be tolerated; anything else must fail cleanly, never crash.
  absl::StatusOr<std::string> png = EncodePng(PatternImage(9, 7, 2));
  ASSERT_TRUE(png.ok());
  for (size_t i = 8; i < png->size(); ++i) {
    std::string bad = *png;
    bad[i] = static_cast<char>(bad[i] ^ 0x5a);
    absl::StatusOr<RawImage> im = DecodePng(bad);
    if (im.ok()) {
      EXPECT_EQ(im->pixels.size(), static_cast<size_t>(im->width) * im->height * im->channels);
    } else {
      EXPECT_EQ(im.status().code(), absl::StatusCode::kInvalidArgument) << "byte " << i;
    }
  }
}

TEST(PngTest, DecodeRejectsHugeCanvasWithoutAllocating) {
  // A valid header claiming 1,000,000 x 1,000,000 RGBA pixels and no real data.
  std::string png = HandMadePng(1, 1, 8, 6, {std::string(4, '\0')}, {});
  std::string ihdr;
  PutBigEndian32(&ihdr, 1000000);
  PutBigEndian32(&ihdr, 1000000);
  ihdr += std::string("\x08\x06\x00\x00\x00", 5);
  std::string big("\x89PNG\r\n\x1a\n", 8);
  PutChunk(&big, "IHDR", ihdr);
  big += png.substr(8 + 25);  // the rest of the small file
  absl::StatusOr<RawImage> im = DecodePng(big);
  EXPECT_EQ(im.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PngTest, DecodesPaletteToRgbAndRgba) {
  const std::string plte("\xff\x00\x00\x00\xff\x00\x00\x00\xff", 9);  // red, green, blue
  const std::vector<std::string> rows = {std::string("\x00\x01", 2), std::string("\x02\x00", 2)};
  absl::StatusOr<RawImage> rgb = DecodePng(HandMadePng(2, 2, 8, 3, rows, {{"PLTE", plte}}));
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_EQ(rgb->channels, 3);
  EXPECT_EQ(rgb->pixels, (std::vector<uint8_t>{255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 0, 0}));

  // tRNS: red fully transparent, green half, blue opaque (missing entries are opaque).
  absl::StatusOr<RawImage> rgba = DecodePng(HandMadePng(
      2, 2, 8, 3, rows, {{"PLTE", plte}, {"tRNS", std::string("\x00\x80", 2)}}));
  ASSERT_TRUE(rgba.ok()) << rgba.status();
  EXPECT_EQ(rgba->channels, 4);
  EXPECT_EQ(rgba->pixels, (std::vector<uint8_t>{255, 0, 0, 0, 0, 255, 0, 128, 0, 0, 255, 255,
                                                255, 0, 0, 0}));
}

TEST(PngTest, DecodesSixteenBitGreyAsEightBitGrey) {
  // k * 257 is exactly k in 8 bits; a linear-light reinterpretation would move the mid-tones.
  std::string row;
  for (int k : {0, 1, 64, 128, 200, 255}) {
    row.push_back(static_cast<char>((k * 257) >> 8));
    row.push_back(static_cast<char>((k * 257) & 0xff));
  }
  absl::StatusOr<RawImage> im = DecodePng(HandMadePng(6, 1, 16, 0, {row}, {}));
  ASSERT_TRUE(im.ok()) << im.status();
  EXPECT_EQ(im->channels, 1);
  EXPECT_EQ(im->pixels, (std::vector<uint8_t>{0, 1, 64, 128, 200, 255}));
}

TEST(PngTest, DecodesLowBitDepthGrey) {
  // 1-bit grey: 10110000 -> 255 0 255 255.
  absl::StatusOr<RawImage> im = DecodePng(HandMadePng(4, 1, 1, 0, {std::string("\xb0", 1)}, {}));
  ASSERT_TRUE(im.ok()) << im.status();
  EXPECT_EQ(im->channels, 1);
  EXPECT_EQ(im->pixels, (std::vector<uint8_t>{255, 0, 255, 255}));
}

// --- TileImages / ResizeNearest ---------------------------------------------------------------

TEST(PngTest, TilesRowMajorAndZeroFillsUnusedCells) {
  // Three 2x1 grey tiles in 2 columns: a 4x2 grid whose last cell is empty.
  std::vector<RawImage> tiles = {Solid(2, 1, 1, 10), Solid(2, 1, 1, 20), Solid(2, 1, 1, 30)};
  tiles[0].pixels = {1, 2};
  absl::StatusOr<RawImage> grid = TileImages(tiles, 2);
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->width, 4);
  EXPECT_EQ(grid->height, 2);
  EXPECT_EQ(grid->channels, 1);
  EXPECT_EQ(grid->pixels, (std::vector<uint8_t>{1, 2, 20, 20,  //
                                                30, 30, 0, 0}));
}

TEST(PngTest, TilesMultiRowMultiChannel) {
  // Two 1x2 RGB tiles in one column: 1 wide, 4 tall.
  RawImage a = Solid(1, 2, 3, 0);
  a.pixels = {1, 2, 3, 4, 5, 6};
  RawImage b = Solid(1, 2, 3, 0);
  b.pixels = {7, 8, 9, 10, 11, 12};
  absl::StatusOr<RawImage> grid = TileImages({a, b}, 1);
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->width, 1);
  EXPECT_EQ(grid->height, 4);
  EXPECT_EQ(grid->pixels, (std::vector<uint8_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));

  // More columns than images: the caller's layout is kept and padded with zeros.
  absl::StatusOr<RawImage> wide = TileImages({a, b}, 3);
  ASSERT_TRUE(wide.ok()) << wide.status();
  EXPECT_EQ(wide->width, 3);
  EXPECT_EQ(wide->height, 2);
  EXPECT_EQ(wide->pixels, (std::vector<uint8_t>{1, 2, 3, 7, 8, 9, 0, 0, 0,  //
                                                4, 5, 6, 10, 11, 12, 0, 0, 0}));
}

TEST(PngTest, TileRejectsBadInput) {
  EXPECT_EQ(TileImages({}, 2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TileImages({Solid(2, 2, 1, 0)}, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TileImages({Solid(2, 2, 1, 0), Solid(2, 3, 1, 0)}, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TileImages({Solid(2, 2, 1, 0), Solid(2, 2, 3, 0)}, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  RawImage broken = Solid(2, 2, 1, 0);
  broken.pixels.pop_back();
  absl::StatusOr<RawImage> bad = TileImages({Solid(2, 2, 1, 0), broken}, 2);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(bad.status().message()), "image 1"));
}

TEST(PngTest, ResizeNearestUpAndDown) {
  RawImage im = Solid(2, 2, 1, 0);
  im.pixels = {1, 2, 3, 4};
  RawImage up = ResizeNearest(im, 4, 4);
  EXPECT_EQ(up.width, 4);
  EXPECT_EQ(up.height, 4);
  EXPECT_EQ(up.channels, 1);
  EXPECT_EQ(up.pixels, (std::vector<uint8_t>{1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4}));

  // 4x4 -> 2x2 samples pixel centres: columns and rows 1 and 3.
  RawImage big = Solid(4, 4, 2, 0);
  for (int i = 0; i < 16; ++i) {
    big.pixels[2 * i] = static_cast<uint8_t>(i);
    big.pixels[2 * i + 1] = static_cast<uint8_t>(100 + i);
  }
  RawImage down = ResizeNearest(big, 2, 2);
  EXPECT_EQ(down.pixels, (std::vector<uint8_t>{5, 105, 7, 107, 13, 113, 15, 115}));

  EXPECT_EQ(ResizeNearest(big, 4, 4).pixels, big.pixels);
  // Non-uniform: column (2*0+1)*2/2 = 1; rows (2y+1)*2/6 = 0, 1, 1.
  RawImage tall = ResizeNearest(im, 1, 3);
  EXPECT_EQ(tall.pixels, (std::vector<uint8_t>{2, 4, 4}));
}

TEST(PngTest, ResizeNearestOfBadInputIsEmptyAndEncodeRejectsIt) {
  RawImage broken = Solid(2, 2, 1, 0);
  broken.pixels.pop_back();
  EXPECT_TRUE(ResizeNearest(broken, 4, 4).pixels.empty());
  EXPECT_TRUE(ResizeNearest(Solid(2, 2, 1, 0), 0, 4).pixels.empty());
  EXPECT_EQ(EncodePng(ResizeNearest(broken, 4, 4)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem

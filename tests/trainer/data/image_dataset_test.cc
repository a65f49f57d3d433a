#include "trainer/data/image_dataset.h"

#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "models/formats/png.h"
#include "tests/testing/base/files.h"
#include "tests/testing/base/images.h"
#include "tests/testing/base/matchers.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

using testing::Contains;

// A fresh directory per test (dir_), removed afterwards, and its files.
class DatasetDirTest : public testing::TempDirTest {
 protected:
  void WriteFile(const std::string& name, const std::string& bytes) const {
    testing::WriteAll(Path(name), bytes);
  }

  void WriteGz(const std::string& name, const std::string& bytes) const {
    gzFile f = gzopen(Path(name).c_str(), "wb");
    ASSERT_NE(f, nullptr) << Path(name);
    ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
    ASSERT_EQ(gzclose(f), Z_OK);
  }

  std::string ReadFile(const std::string& name) const { return testing::ReadAll(Path(name)); }
};

// --- Fashion-MNIST ------------------------------------------------------------------------------

void PutBigEndian32(std::string* s, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) s->push_back(static_cast<char>((v >> shift) & 0xff));
}

std::string IdxImages(uint32_t count, uint32_t rows, uint32_t cols, const std::string& pixels) {
  std::string s;
  PutBigEndian32(&s, 0x00000803);
  PutBigEndian32(&s, count);
  PutBigEndian32(&s, rows);
  PutBigEndian32(&s, cols);
  return s + pixels;
}

std::string IdxLabels(const std::string& labels) {
  std::string s;
  PutBigEndian32(&s, 0x00000801);
  PutBigEndian32(&s, static_cast<uint32_t>(labels.size()));
  return s + labels;
}

// Three 28x28 images whose every pixel is distinct per image and position.
std::string ThreeImagesPixels() {
  std::string p(3 * 28 * 28, '\0');
  for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<char>((i * 7 + i / 784 * 50) % 256);
  return p;
}

const std::string kThreeLabels("\x09\x00\x03", 3);

class FashionMnistTest : public DatasetDirTest {
 protected:
  // A valid hand-made "train" split of 3 images.
  void WriteThree() const {
    WriteGz("train-images-idx3-ubyte.gz", IdxImages(3, 28, 28, ThreeImagesPixels()));
    WriteGz("train-labels-idx1-ubyte.gz", IdxLabels(kThreeLabels));
  }
};

TEST(FashionMnistCaptionTest, ClassesAndCaptions) {
  const std::vector<std::string>& classes = FashionMnistClasses();
  ASSERT_EQ(classes.size(), 10u);
  EXPECT_EQ(classes[0], "T-shirt/top");
  EXPECT_EQ(classes[9], "Ankle boot");

  EXPECT_EQ(FashionMnistCaption(9, 0), "a photo of an ankle boot");
  EXPECT_EQ(FashionMnistCaption(9, 1), "an ankle boot");
  EXPECT_EQ(FashionMnistCaption(1, 2), "a picture of a pair of trousers");
  EXPECT_EQ(FashionMnistCaption(0, 3), "a black and white photo of a t-shirt");
  const char* nouns[] = {"t-shirt", "trousers", "pullover", "dress", "coat",
                         "sandal",  "shirt",    "sneaker",  "bag",   "ankle boot"};
  for (int label = 0; label < 10; ++label) {
    for (uint64_t variant = 0; variant < 8; ++variant) {
      const std::string caption = FashionMnistCaption(label, variant);
      EXPECT_TRUE(Contains(caption, nouns[label])) << label << " " << variant;
      EXPECT_EQ(caption, FashionMnistCaption(label, variant));  // deterministic
      EXPECT_EQ(caption, FashionMnistCaption(label, variant + 4));  // phrasings cycle
    }
  }
  EXPECT_NE(FashionMnistCaption(3, 0), FashionMnistCaption(3, 1));
  EXPECT_EQ(FashionMnistCaption(-1, 0), "");
  EXPECT_EQ(FashionMnistCaption(10, 0), "");
}

TEST(FashionMnistRealTest, LoadsDebianPackage) {
  if (!fs::exists(kFashionMnistDir)) GTEST_SKIP() << kFashionMnistDir << " not installed";
  absl::StatusOr<std::unique_ptr<ImageDataset>> train = LoadFashionMnist(kFashionMnistDir, "train");
  ASSERT_TRUE(train.ok()) << train.status();
  absl::StatusOr<std::unique_ptr<ImageDataset>> test = LoadFashionMnist(kFashionMnistDir, "test");
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_EQ((*train)->size(), 60000);
  EXPECT_EQ((*test)->size(), 10000);
  for (const ImageDataset* ds : {train->get(), test->get()}) {
    EXPECT_EQ(ds->width(), 28);
    EXPECT_EQ(ds->height(), 28);
    EXPECT_EQ(ds->channels(), 1);
    for (int64_t i : {int64_t{0}, int64_t{1}, ds->size() / 2, ds->size() - 1}) {
      CaptionedImage ex = ds->Get(i, static_cast<uint64_t>(i));
      EXPECT_EQ(ex.image.width, 28);
      EXPECT_EQ(ex.image.height, 28);
      EXPECT_EQ(ex.image.channels, 1);
      EXPECT_EQ(ex.image.pixels.size(), 784u);
      EXPECT_GE(ex.label, 0);
      EXPECT_LE(ex.label, 9);
      EXPECT_EQ(ex.caption, FashionMnistCaption(ex.label, static_cast<uint64_t>(i)));
    }
  }
  // The well-known first training example is an ankle boot (label 9); its pixel sum was read
  // independently with Python's gzip module.
  CaptionedImage first = (*train)->Get(0, 0);
  EXPECT_EQ(first.label, 9);
  EXPECT_EQ(first.caption, "a photo of an ankle boot");
  uint64_t sum = 0;
  for (uint8_t p : first.image.pixels) sum += p;
  EXPECT_EQ(sum, 76247u);
  // Training labels start 9 0 0 3 0 2 7 2; the first test label is 9 too.
  const int expected[] = {9, 0, 0, 3, 0, 2, 7, 2};
  for (int i = 0; i < 8; ++i) EXPECT_EQ((*train)->Get(i, 0).label, expected[i]) << i;
  EXPECT_EQ((*test)->Get(0, 0).label, 9);
  // Out of range is an empty example, not a crash.
  EXPECT_TRUE((*train)->Get(60000, 0).image.pixels.empty());
  EXPECT_EQ((*train)->Get(-1, 0).label, -1);
}

TEST_F(FashionMnistTest, HandMadeSplitRoundTripsExactly) {
  WriteThree();
  absl::StatusOr<std::unique_ptr<ImageDataset>> ds = LoadFashionMnist(dir_, "train");
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ((*ds)->size(), 3);
  EXPECT_EQ((*ds)->width(), 28);
  EXPECT_EQ((*ds)->height(), 28);
  EXPECT_EQ((*ds)->channels(), 1);
  const std::string pixels = ThreeImagesPixels();
  for (int i = 0; i < 3; ++i) {
    CaptionedImage ex = (*ds)->Get(i, 1);
    EXPECT_EQ(ex.label, kThreeLabels[i]);
    EXPECT_EQ(ex.caption, FashionMnistCaption(ex.label, 1));
    EXPECT_EQ(std::string(ex.image.pixels.begin(), ex.image.pixels.end()),
              pixels.substr(i * 784, 784))
        << i;
  }
  EXPECT_EQ((*ds)->Get(0, 1).caption, "an ankle boot");
}

TEST_F(FashionMnistTest, NonSquareImagesKeepRowsAndColumns) {
  // IDX stores rows (height) before columns (width).
  WriteGz("t10k-images-idx3-ubyte.gz", IdxImages(1, 2, 3, "\x01\x02\x03\x04\x05\x06"));
  WriteGz("t10k-labels-idx1-ubyte.gz", IdxLabels(std::string(1, '\x05')));
  absl::StatusOr<std::unique_ptr<ImageDataset>> ds = LoadFashionMnist(dir_, "test");
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->width(), 3);
  EXPECT_EQ((*ds)->height(), 2);
  EXPECT_EQ((*ds)->Get(0, 0).image.pixels, (std::vector<uint8_t>{1, 2, 3, 4, 5, 6}));
}

TEST_F(FashionMnistTest, MissingFilesAreNotFoundNamingTheFile) {
  absl::StatusOr<std::unique_ptr<ImageDataset>> ds =
      LoadFashionMnist(Path("no/such/dir"), "train");
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(ds.status().message(), "no/such/dir/train-images-idx3-ubyte.gz"));

  WriteGz("train-images-idx3-ubyte.gz", IdxImages(3, 28, 28, ThreeImagesPixels()));
  ds = LoadFashionMnist(dir_, "train");
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(ds.status().message(), "train-labels-idx1-ubyte.gz"));
}

TEST_F(FashionMnistTest, UnknownSplitIsInvalidArgument) {
  WriteThree();
  EXPECT_EQ(LoadFashionMnist(dir_, "validation").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(FashionMnistTest, TruncatedGzipIsDataLoss) {
  WriteThree();
  const std::string gz = ReadFile("train-images-idx3-ubyte.gz");
  // Cut inside the deflate stream, and just before the 8-byte gzip trailer.
  for (size_t n : {gz.size() / 2, gz.size() - 4, size_t{20}}) {
    WriteFile("train-images-idx3-ubyte.gz", gz.substr(0, n));
    absl::StatusOr<std::unique_ptr<ImageDataset>> ds = LoadFashionMnist(dir_, "train");
    EXPECT_EQ(ds.status().code(), absl::StatusCode::kDataLoss) << n << ": " << ds.status();
    EXPECT_TRUE(Contains(ds.status().message(), "train-images-idx3-ubyte.gz"));
  }
}

TEST_F(FashionMnistTest, TruncatedRealLabelsAreDataLoss) {
  const std::string real = absl::StrCat(kFashionMnistDir, "/t10k-labels-idx1-ubyte.gz");
  if (!fs::exists(real)) GTEST_SKIP() << real << " not installed";
  std::ifstream in(real, std::ios::binary);
  const std::string gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  WriteGz("t10k-images-idx3-ubyte.gz", IdxImages(1, 28, 28, std::string(784, '\0')));
  WriteFile("t10k-labels-idx1-ubyte.gz", gz.substr(0, 1000));
  absl::StatusOr<std::unique_ptr<ImageDataset>> ds = LoadFashionMnist(dir_, "test");
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kDataLoss) << ds.status();
  EXPECT_TRUE(Contains(ds.status().message(), "t10k-labels-idx1-ubyte.gz"));
}

TEST_F(FashionMnistTest, ShortPayloadIsDataLoss) {
  // A well-formed gzip whose IDX header promises 3 images but holds 2.
  WriteGz("train-images-idx3-ubyte.gz",
          IdxImages(3, 28, 28, ThreeImagesPixels().substr(0, 2 * 784)));
  WriteGz("train-labels-idx1-ubyte.gz", IdxLabels(kThreeLabels));
  absl::StatusOr<std::unique_ptr<ImageDataset>> ds = LoadFashionMnist(dir_, "train");
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(ds.status().message(), "truncated"));
  EXPECT_TRUE(Contains(ds.status().message(), "train-images-idx3-ubyte.gz"));
}

TEST_F(FashionMnistTest, CorruptContentsAreDataLoss) {
  struct Case {
    const char* what;
    std::string images;
    std::string labels;
    const char* message;
  };
  const std::string pixels = ThreeImagesPixels();
  std::string swapped_magic = IdxLabels(kThreeLabels);
  const Case cases[] = {
      {"labels magic in the images file", swapped_magic, IdxLabels(kThreeLabels), "magic"},
      {"images magic in the labels file", IdxImages(3, 28, 28, pixels),
       IdxImages(3, 28, 28, pixels), "magic"},
      {"count mismatch", IdxImages(3, 28, 28, pixels), IdxLabels(kThreeLabels.substr(0, 2)),
       "3 images"},
      {"label out of range", IdxImages(3, 28, 28, pixels), IdxLabels(std::string("\x01\x0a\x02", 3)),
       "label 1 is 10"},
      {"zero rows", IdxImages(3, 0, 28, ""), IdxLabels(kThreeLabels), "dimension 1"},
      {"trailing bytes", IdxImages(3, 28, 28, pixels + "x"), IdxLabels(kThreeLabels), "after"},
      {"header only", IdxImages(3, 28, 28, pixels).substr(0, 10), IdxLabels(kThreeLabels),
       "truncated"},
  };
  for (const Case& c : cases) {
    WriteGz("train-images-idx3-ubyte.gz", c.images);
    WriteGz("train-labels-idx1-ubyte.gz", c.labels);
    absl::StatusOr<std::unique_ptr<ImageDataset>> ds = LoadFashionMnist(dir_, "train");
    EXPECT_EQ(ds.status().code(), absl::StatusCode::kDataLoss) << c.what << ": " << ds.status();
    EXPECT_TRUE(Contains(ds.status().message(), c.message)) << c.what;
  }
}

TEST_F(FashionMnistTest, CorruptGzipCrcIsDataLoss) {
  WriteThree();
  std::string gz = ReadFile("train-labels-idx1-ubyte.gz");
  gz[gz.size() - 8] = static_cast<char>(gz[gz.size() - 8] ^ 0xff);  // CRC32 in the trailer
  WriteFile("train-labels-idx1-ubyte.gz", gz);
  absl::StatusOr<std::unique_ptr<ImageDataset>> ds = LoadFashionMnist(dir_, "train");
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kDataLoss) << ds.status();
  EXPECT_TRUE(Contains(ds.status().message(), "train-labels-idx1-ubyte.gz"));
}

// --- Image folder -------------------------------------------------------------------------------

using testing::PatternImage;

class ImageFolderTest : public DatasetDirTest {
 protected:
  void WritePng(const std::string& name, const RawImage& im) const {
    absl::StatusOr<std::string> png = EncodePng(im);
    ASSERT_TRUE(png.ok()) << png.status();
    WriteFile(name, *png);
  }

  absl::Status LoadStatus() const { return LoadImageFolder(dir_).status(); }
};

TEST_F(ImageFolderTest, ReadsImagesAndCaptionsBackExactly) {
  const std::vector<RawImage> images = {PatternImage(5, 4, 3, 1), PatternImage(5, 4, 3, 2),
                                        PatternImage(5, 4, 3, 3)};
  WritePng("a.png", images[0]);
  WritePng("b.png", images[1]);
  WritePng("sub/c.png", images[2]);
  WriteFile("metadata.jsonl",
            "{\"file_name\": \"a.png\", \"text\": \"a red square\"}\n"
            "\n"
            "  {\"text\": \"caf\\u00e9 \\\"quoted\\\"\", \"file_name\": \"b.png\", \"extra\": 1}\r\n"
            "{\"file_name\": \"sub/c.png\", \"text\": \"\"}");  // no final newline
  absl::StatusOr<std::unique_ptr<ImageDataset>> ds = LoadImageFolder(dir_);
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ((*ds)->size(), 3);
  EXPECT_EQ((*ds)->width(), 5);
  EXPECT_EQ((*ds)->height(), 4);
  EXPECT_EQ((*ds)->channels(), 3);
  const std::string captions[] = {"a red square", "caf\xc3\xa9 \"quoted\"", ""};
  for (int i = 0; i < 3; ++i) {
    CaptionedImage ex = (*ds)->Get(i, 7);
    EXPECT_EQ(ex.caption, captions[i]);
    EXPECT_EQ(ex.label, -1);
    EXPECT_EQ(ex.image.width, 5);
    EXPECT_EQ(ex.image.height, 4);
    EXPECT_EQ(ex.image.channels, 3);
    EXPECT_EQ(ex.image.pixels, images[i].pixels) << i;
  }
  EXPECT_TRUE((*ds)->Get(3, 0).image.pixels.empty());
}

TEST_F(ImageFolderTest, GreyImagesStayOneChannel) {
  WritePng("g.png", PatternImage(3, 3, 1, 5));
  WriteFile("metadata.jsonl", "{\"file_name\": \"g.png\", \"text\": \"grey\"}\n");
  absl::StatusOr<std::unique_ptr<ImageDataset>> ds = LoadImageFolder(dir_);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->channels(), 1);
  EXPECT_EQ((*ds)->Get(0, 0).image.pixels, PatternImage(3, 3, 1, 5).pixels);
}

TEST_F(ImageFolderTest, BadJsonNamesTheLine) {
  WritePng("a.png", PatternImage(2, 2, 1, 0));
  WriteFile("metadata.jsonl",
            "{\"file_name\": \"a.png\", \"text\": \"ok\"}\n"
            "\n"
            "{\"file_name\": \"a.png\", \"text\": \n");
  absl::Status s = LoadStatus();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(s.message(), "line 3"));
}

TEST_F(ImageFolderTest, MissingOrMistypedKeysNameTheLine) {
  WritePng("a.png", PatternImage(2, 2, 1, 0));
  for (const std::string& line :
       {std::string("{\"file_name\": \"a.png\"}"), std::string("{\"text\": \"x\"}"),
        std::string("{\"file_name\": 3, \"text\": \"x\"}"), std::string("[\"a.png\", \"x\"]")}) {
    WriteFile("metadata.jsonl", "{\"file_name\": \"a.png\", \"text\": \"ok\"}\n" + line + "\n");
    absl::Status s = LoadStatus();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << line << ": " << s;
    EXPECT_TRUE(Contains(s.message(), "line 2")) << line;
  }
}

TEST_F(ImageFolderTest, MissingImageIsNotFound) {
  WritePng("a.png", PatternImage(2, 2, 1, 0));
  WriteFile("metadata.jsonl",
            "{\"file_name\": \"a.png\", \"text\": \"ok\"}\n"
            "{\"file_name\": \"gone.png\", \"text\": \"missing\"}\n");
  absl::Status s = LoadStatus();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_TRUE(Contains(s.message(), "gone.png"));
}

TEST_F(ImageFolderTest, PathsOutsideTheFolderAreRejected) {
  WritePng("a.png", PatternImage(2, 2, 1, 0));
  for (const std::string name : {"../x.png", "sub/../../x.png", "..", "/etc/passwd", ""}) {
    WriteFile("metadata.jsonl", "{\"file_name\": \"" + name + "\", \"text\": \"x\"}\n");
    absl::Status s = LoadStatus();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << name << ": " << s;
    EXPECT_TRUE(Contains(s.message(), "line 1")) << name;
  }
  // ".." inside a name is fine.
  WritePng("a..b.png", PatternImage(2, 2, 1, 0));
  WriteFile("metadata.jsonl", "{\"file_name\": \"a..b.png\", \"text\": \"x\"}\n");
  EXPECT_TRUE(LoadStatus().ok()) << LoadStatus();
}

TEST_F(ImageFolderTest, ASymlinkLeadingOutOfTheRootFailsAtTheOpen) {
  // The folder is confined to its own parent (dir_'s), a stand-in for --data_dir: an image
  // that is a symlink to a file outside it is refused when it is read, not only when checked.
  const std::string root = dir_ + "/data";
  const std::string outside = dir_ + "/secret.png";
  absl::StatusOr<std::string> png = EncodePng(PatternImage(2, 2, 1, 0));
  ASSERT_TRUE(png.ok());
  testing::WriteAll(root + "/set/a.png", *png);
  testing::WriteAll(outside, *png);
  fs::create_symlink(outside, root + "/set/b.png");
  testing::WriteAll(root + "/set/metadata.jsonl",
                    "{\"file_name\": \"a.png\", \"text\": \"x\"}\n"
                    "{\"file_name\": \"b.png\", \"text\": \"y\"}\n");
  EXPECT_TRUE(LoadImageFolder(root + "/set").ok()) << "unconfined, the link is followed";
  absl::StatusOr<std::unique_ptr<ImageDataset>> ds = LoadImageFolder(root + "/set", root);
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kPermissionDenied) << ds.status();
  EXPECT_TRUE(Contains(ds.status().message(), "leads outside")) << ds.status();
  fs::remove(root + "/set/b.png");
  fs::copy_file(outside, root + "/set/b.png");
  EXPECT_TRUE(LoadImageFolder(root + "/set", root).ok());
}

TEST_F(ImageFolderTest, MismatchedSizesOrChannelsNameTheOddFile) {
  WritePng("a.png", PatternImage(4, 4, 3, 0));
  WritePng("b.png", PatternImage(4, 4, 3, 1));
  WritePng("small.png", PatternImage(4, 3, 3, 2));
  WritePng("rgba.png", PatternImage(4, 4, 4, 3));
  for (const char* odd : {"small.png", "rgba.png"}) {
    WriteFile("metadata.jsonl", absl::StrCat("{\"file_name\": \"a.png\", \"text\": \"x\"}\n",
                                             "{\"file_name\": \"b.png\", \"text\": \"y\"}\n",
                                             "{\"file_name\": \"", odd, "\", \"text\": \"z\"}\n"));
    absl::Status s = LoadStatus();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << odd << ": " << s;
    EXPECT_TRUE(Contains(s.message(), odd));
  }
}

TEST_F(ImageFolderTest, NonPngIsInvalidArgumentNamingTheFile) {
  WriteFile("photo.jpg", "\xff\xd8\xff\xe0 not really a jpeg");
  WriteFile("metadata.jsonl", "{\"file_name\": \"photo.jpg\", \"text\": \"x\"}\n");
  absl::Status s = LoadStatus();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(s.message(), "photo.jpg"));
}

TEST_F(ImageFolderTest, MissingFolderOrMetadataIsNotFoundAndEmptyIsInvalid) {
  EXPECT_EQ(LoadImageFolder(Path("nope")).status().code(), absl::StatusCode::kNotFound);
  absl::Status s = LoadStatus();  // the folder exists, metadata.jsonl does not
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_TRUE(Contains(s.message(), "metadata.jsonl"));
  WriteFile("metadata.jsonl", "\n  \n");
  EXPECT_EQ(LoadStatus().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem

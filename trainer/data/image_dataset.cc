#include "trainer/data/image_dataset.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "base/confined_open.h"
#include "models/formats/png.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Fashion-MNIST (IDX files, gzip-compressed)

constexpr uint32_t kIdxImagesMagic = 0x00000803;  // unsigned bytes, 3 dimensions
constexpr uint32_t kIdxLabelsMagic = 0x00000801;  // unsigned bytes, 1 dimension
// Bounds that a corrupt header cannot talk us past (the real files: 60000 x 28 x 28).
constexpr uint32_t kMaxIdxItems = 10'000'000;
constexpr uint32_t kMaxIdxSide = 4096;
constexpr uint64_t kMaxIdxBytes = uint64_t{4} << 30;
constexpr int kNumClasses = 10;

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

absl::StatusOr<GzFile> OpenGz(const std::string& path, const std::string& root) {
  errno = 0;
  gzFile f;
  if (root.empty()) {
    f = gzopen(path.c_str(), "rb");
  } else {
    absl::StatusOr<int> fd = OpenBeneath(root, path, O_RDONLY);
    if (!fd.ok() && fd.status().code() != absl::StatusCode::kNotFound) return fd.status();
    if (!fd.ok()) errno = ENOENT;
    f = fd.ok() ? gzdopen(*fd, "rb") : nullptr;
    if (fd.ok() && f == nullptr) ::close(*fd);
  }
  if (f == nullptr) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return absl::NotFoundError(absl::StrCat(
          "Fashion-MNIST file ", path,
          " not found; install Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist) "
          "or pass a folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"));
    }
    if (err == EACCES) {
      return absl::PermissionDeniedError(absl::StrCat("cannot read ", path, ": permission denied"));
    }
    return absl::UnavailableError(
        absl::StrCat("cannot open ", path, ": ", err ? std::strerror(err) : "gzopen failed"));
  }
  gzbuffer(f, 1 << 17);  // fewer syscalls for the 47 MB training images
  return GzFile(f);
}

// zlib's description of the stream's error state, or "" when there is none.
std::string GzErrorText(gzFile f) {
  int errnum = Z_OK;
  const char* msg = gzerror(f, &errnum);
  if (errnum == Z_OK) return "";
  if (errnum == Z_ERRNO) return std::strerror(errno);
  return msg ? msg : "zlib error";
}

// Appends exactly `n` decompressed bytes to `out`, growing it as data arrives so that a header
// claiming more than the file holds costs no big allocation. DATA_LOSS when short.
absl::Status ReadExact(gzFile f, const std::string& path, uint64_t n, const char* what,
                       std::vector<uint8_t>* out) {
  constexpr uint64_t kChunk = uint64_t{16} << 20;
  const size_t start = out->size();
  uint64_t done = 0;
  while (done < n) {
    const uint64_t want = std::min(kChunk, n - done);
    out->resize(start + done + want);
    const int got = gzread(f, out->data() + start + done, static_cast<unsigned>(want));
    if (got < 0) {
      out->resize(start + done);
      return absl::DataLossError(
          absl::StrCat(path, " is corrupt reading ", what, ": ", GzErrorText(f)));
    }
    done += static_cast<uint64_t>(got);
    if (static_cast<uint64_t>(got) < want) {
      out->resize(start + done);
      const std::string err = GzErrorText(f);
      return absl::DataLossError(absl::StrCat(
          path, " is truncated: expected ", n, " bytes of ", what, ", got ", done,
          err.empty() ? "" : absl::StrCat(" (", err, ")"), "; re-download or reinstall the data"));
    }
  }
  return absl::OkStatus();
}

uint32_t BigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

struct IdxFile {
  std::vector<uint32_t> dims;
  std::vector<uint8_t> data;
};

// Reads a whole unsigned-byte IDX file: magic, `ndims` big-endian sizes, then exactly the
// product of the sizes in bytes and nothing after (which also makes zlib check the gzip CRC).
absl::StatusOr<IdxFile> ReadIdx(const std::string& path, const std::string& root, uint32_t magic,
                                int ndims) {
  absl::StatusOr<GzFile> gz = OpenGz(path, root);
  if (!gz.ok()) return gz.status();
  gzFile f = gz->get();

  // The magic alone first, so a wrong kind of file is named as such even when it is short.
  std::vector<uint8_t> header;
  if (absl::Status s = ReadExact(f, path, 4, "IDX magic", &header); !s.ok()) return s;
  const uint32_t got_magic = BigEndian32(header.data());
  if (got_magic != magic) {
    return absl::DataLossError(absl::StrCat(
        path, " is not an IDX ", ndims == 1 ? "labels" : "images", " file: magic 0x",
        absl::Hex(got_magic, absl::kZeroPad8), ", expected 0x", absl::Hex(magic, absl::kZeroPad8)));
  }
  if (absl::Status s = ReadExact(f, path, 4 * static_cast<uint64_t>(ndims), "IDX dimensions",
                                 &header);
      !s.ok()) {
    return s;
  }
  IdxFile idx;
  uint64_t total = 1;
  for (int i = 0; i < ndims; ++i) {
    const uint32_t d = BigEndian32(header.data() + 4 + 4 * i);
    const uint32_t limit = i == 0 ? kMaxIdxItems : kMaxIdxSide;
    if (d == 0 || d > limit) {
      return absl::DataLossError(absl::StrCat(path, ": dimension ", i, " is ", d,
                                              ", expected 1..", limit, "; the header is corrupt"));
    }
    idx.dims.push_back(d);
    total *= d;  // cannot overflow: at most 1e7 * 4096 * 4096
  }
  if (total > kMaxIdxBytes) {
    return absl::DataLossError(
        absl::StrCat(path, ": header claims ", total, " bytes of data; the header is corrupt"));
  }
  if (absl::Status s = ReadExact(f, path, total, ndims == 1 ? "labels" : "pixels", &idx.data);
      !s.ok()) {
    return s;
  }
  // Nothing may follow, and reading to the end verifies the gzip trailer (CRC and length).
  uint8_t extra;
  const int more = gzread(f, &extra, 1);
  if (more > 0) {
    return absl::DataLossError(
        absl::StrCat(path, " has data after the ", total, " bytes its header announces"));
  }
  if (const std::string err = GzErrorText(f); more < 0 || !err.empty()) {
    return absl::DataLossError(absl::StrCat(path, " is corrupt or truncated at the end: ",
                                            err.empty() ? "read error" : err));
  }
  return idx;
}

class FashionMnistDataset : public ImageDataset {
 public:
  FashionMnistDataset(int width, int height, std::vector<uint8_t> pixels,
                      std::vector<uint8_t> labels)
      : width_(width), height_(height), pixels_(std::move(pixels)), labels_(std::move(labels)) {}

  int64_t size() const override { return static_cast<int64_t>(labels_.size()); }
  int width() const override { return width_; }
  int height() const override { return height_; }
  int channels() const override { return 1; }

  CaptionedImage Get(int64_t index, uint64_t variant) const override {
    CaptionedImage out;
    if (index < 0 || index >= size()) return out;  // empty image, label -1: a caller bug
    const size_t n = static_cast<size_t>(width_) * height_;
    out.image.width = width_;
    out.image.height = height_;
    out.image.channels = 1;
    out.image.pixels.assign(pixels_.begin() + index * n, pixels_.begin() + (index + 1) * n);
    out.label = labels_[index];
    out.caption = FashionMnistCaption(out.label, variant);
    return out;
  }

 private:
  int width_;
  int height_;
  std::vector<uint8_t> pixels_;  // size() x height x width
  std::vector<uint8_t> labels_;
};

// ---------------------------------------------------------------------------------------------
// Image folder (metadata.jsonl + PNG files)

// Caps the decoded folder kept in memory; beyond it the user should downscale or split.
constexpr uint64_t kMaxFolderBytes = uint64_t{8} << 30;

class ImageFolderDataset : public ImageDataset {
 public:
  ImageFolderDataset(std::vector<RawImage> images, std::vector<std::string> captions)
      : images_(std::move(images)), captions_(std::move(captions)) {}

  int64_t size() const override { return static_cast<int64_t>(images_.size()); }
  int width() const override { return images_.front().width; }
  int height() const override { return images_.front().height; }
  int channels() const override { return images_.front().channels; }

  CaptionedImage Get(int64_t index, uint64_t /*variant*/) const override {
    CaptionedImage out;
    if (index < 0 || index >= size()) return out;  // empty image: a caller bug
    out.image = images_[index];
    out.caption = captions_[index];
    return out;
  }

 private:
  std::vector<RawImage> images_;  // never empty; all the same size and channels
  std::vector<std::string> captions_;
};

// Relative, inside the folder: no absolute paths and no ".." components (either separator, so
// a Windows-made metadata file cannot escape either).
absl::Status ValidateFileName(const std::string& name, int line) {
  if (name.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata.jsonl line ", line, ": \"file_name\" is empty"));
  }
  if (name.front() == '/' || name.front() == '\\') {
    return absl::InvalidArgumentError(absl::StrCat(
        "metadata.jsonl line ", line, ": file_name \"", name,
        "\" is an absolute path; use a path relative to the image folder"));
  }
  for (absl::string_view part : absl::StrSplit(name, absl::ByAnyChar("/\\"))) {
    if (part == "..") {
      return absl::InvalidArgumentError(absl::StrCat(
          "metadata.jsonl line ", line, ": file_name \"", name,
          "\" has a \"..\" component; images must live inside the image folder"));
    }
  }
  return absl::OkStatus();
}

struct FolderEntry {
  std::string file_name;
  std::string text;
  int line = 0;
};

absl::StatusOr<std::vector<FolderEntry>> ParseMetadata(const std::string& path,
                                                       const std::string& root) {
  absl::StatusOr<std::string> content = ReadFileBeneath(root, path);
  if (!content.ok()) {
    if (content.status().code() != absl::StatusCode::kNotFound) return content.status();
    return absl::NotFoundError(absl::StrCat(
        "cannot open ", path,
        "; an image folder needs metadata.jsonl with lines like "
        "{\"file_name\": \"0001.png\", \"text\": \"a caption\"}"));
  }
  std::vector<FolderEntry> entries;
  int line = 0;
  for (absl::string_view raw : absl::StrSplit(*content, '\n')) {
    ++line;
    absl::string_view text = absl::StripAsciiWhitespace(raw);
    if (text.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), /*cb=*/nullptr,
                                             /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, " line ", line, ": not a JSON object; expected "
          "{\"file_name\": \"x.png\", \"text\": \"a caption\"}"));
    }
    FolderEntry e;
    e.line = line;
    for (const char* key : {"file_name", "text"}) {
      auto it = j.find(key);
      if (it == j.end() || !it->is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(path, " line ", line, ": missing string \"",
                                                       key, "\""));
      }
      (std::strcmp(key, "file_name") == 0 ? e.file_name : e.text) = it->get<std::string>();
    }
    if (absl::Status s = ValidateFileName(e.file_name, line); !s.ok()) return s;
    entries.push_back(std::move(e));
  }
  if (entries.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " lists no images"));
  }
  return entries;
}

absl::StatusOr<std::string> ReadFileBytes(const std::string& path, const std::string& root) {
  absl::StatusOr<std::string> bytes = ReadFileBeneath(root, path);
  if (bytes.status().code() == absl::StatusCode::kNotFound) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path));
  }
  return bytes;
}

}  // namespace

const std::vector<std::string>& FashionMnistClasses() {
  static const auto* classes = new std::vector<std::string>{
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return *classes;
}

std::string FashionMnistCaption(int label, uint64_t variant) {
  // Natural nouns with their articles, in label order.
  static constexpr const char* kNouns[kNumClasses] = {
      "a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat",
      "a sandal",  "a shirt",            "a sneaker",  "a bag",   "an ankle boot"};
  static constexpr const char* kPhrasings[] = {"a photo of {x}", "{x}", "a picture of {x}",
                                               "a black and white photo of {x}"};
  constexpr uint64_t kNumPhrasings = sizeof(kPhrasings) / sizeof(kPhrasings[0]);
  if (label < 0 || label >= kNumClasses) return "";
  return absl::StrReplaceAll(kPhrasings[variant % kNumPhrasings], {{"{x}", kNouns[label]}});
}

absl::StatusOr<std::unique_ptr<ImageDataset>> LoadFashionMnist(const std::string& dir,
                                                               const std::string& split,
                                                               const std::string& root) {
  std::string prefix;
  if (split == "train") {
    prefix = "train";
  } else if (split == "test" || split == "t10k") {
    prefix = "t10k";
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("Fashion-MNIST split must be \"train\" or \"test\", got \"", split, "\""));
  }
  const std::string images_path = absl::StrCat(dir, "/", prefix, "-images-idx3-ubyte.gz");
  const std::string labels_path = absl::StrCat(dir, "/", prefix, "-labels-idx1-ubyte.gz");

  absl::StatusOr<IdxFile> images = ReadIdx(images_path, root, kIdxImagesMagic, 3);
  if (!images.ok()) return images.status();
  absl::StatusOr<IdxFile> labels = ReadIdx(labels_path, root, kIdxLabelsMagic, 1);
  if (!labels.ok()) return labels.status();
  if (images->dims[0] != labels->dims[0]) {
    return absl::DataLossError(absl::StrCat(images_path, " holds ", images->dims[0],
                                            " images but ", labels_path, " holds ",
                                            labels->dims[0], " labels"));
  }
  for (size_t i = 0; i < labels->data.size(); ++i) {
    if (labels->data[i] >= kNumClasses) {
      return absl::DataLossError(absl::StrCat(labels_path, ": label ", i, " is ",
                                              int{labels->data[i]}, ", expected 0..",
                                              kNumClasses - 1));
    }
  }
  // IDX image dimensions are count, rows, columns.
  return std::unique_ptr<ImageDataset>(new FashionMnistDataset(
      static_cast<int>(images->dims[2]), static_cast<int>(images->dims[1]),
      std::move(images->data), std::move(labels->data)));
}

absl::StatusOr<std::unique_ptr<ImageDataset>> LoadImageFolder(const std::string& dir,
                                                              const std::string& root) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("image folder ", dir, " does not exist"));
  }
  const std::string metadata_path = absl::StrCat(dir, "/metadata.jsonl");
  absl::StatusOr<std::vector<FolderEntry>> entries = ParseMetadata(metadata_path, root);
  if (!entries.ok()) return entries.status();

  // Existence first, so a missing file is reported before minutes of decoding.
  for (const FolderEntry& e : *entries) {
    const std::string path = absl::StrCat(dir, "/", e.file_name);
    if (!fs::is_regular_file(path, ec)) {
      return absl::NotFoundError(absl::StrCat("image ", path, " (", metadata_path, " line ",
                                              e.line, ") not found"));
    }
  }

  // Decoded eagerly: Get() cannot report errors, so every file is validated here, and training
  // reads each image many times.
  std::vector<RawImage> images;
  std::vector<std::string> captions;
  images.reserve(entries->size());
  captions.reserve(entries->size());
  for (FolderEntry& e : *entries) {
    const std::string path = absl::StrCat(dir, "/", e.file_name);
    absl::StatusOr<std::string> bytes = ReadFileBytes(path, root);
    if (!bytes.ok()) return bytes.status();
    absl::StatusOr<RawImage> image = DecodePng(*bytes);
    if (!image.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("image ", path, " (", metadata_path, " line ",
                                                     e.line, "): only PNG is supported: ",
                                                     image.status().message()));
    }
    if (images.empty()) {
      const uint64_t total = static_cast<uint64_t>(image->pixels.size()) * entries->size();
      if (total > kMaxFolderBytes) {
        return absl::ResourceExhaustedError(absl::StrCat(
            dir, ": ", entries->size(), " images of ", image->width, "x", image->height, "x",
            image->channels, " need ", total, " bytes decoded, above the ", kMaxFolderBytes,
            "-byte limit; downscale the images or split the folder"));
      }
    } else {
      const RawImage& first = images.front();
      if (image->width != first.width || image->height != first.height ||
          image->channels != first.channels) {
        return absl::InvalidArgumentError(absl::StrCat(
            "image ", path, " is ", image->width, "x", image->height, "x", image->channels,
            " but ", dir, "/", entries->front().file_name, " is ", first.width, "x",
            first.height, "x", first.channels,
            "; all images in a folder must share size and channels (resize or convert them)"));
      }
    }
    images.push_back(*std::move(image));
    captions.push_back(std::move(e.text));
  }
  return std::unique_ptr<ImageDataset>(
      new ImageFolderDataset(std::move(images), std::move(captions)));
}

}  // namespace tandem

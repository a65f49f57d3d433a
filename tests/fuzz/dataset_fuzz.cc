// The dataset readers on arbitrary files: the first input byte picks the reader, the rest is the
// file — an IDX images or labels file (read through zlib, which passes non-gzip bytes through),
// an image folder's metadata.jsonl (beside one valid PNG), or a text corpus (then its minimum
// vocabulary). Each must answer a status or a well-formed dataset, never crash.
#include <sys/stat.h>

#include <cstdint>
#include <string>

#include "models/formats/png.h"
#include "tests/fuzz/fuzz_files.h"
#include "trainer/data/image_dataset.h"
#include "trainer/data/text_dataset.h"

namespace {

const std::string& Dir(const char* name) {
  static std::string* dirs[3] = {nullptr, nullptr, nullptr};
  const int i = name[0] == 'i' ? 0 : name[0] == 'f' ? 1 : 2;
  if (dirs[i] == nullptr) {
    dirs[i] = new std::string(tandem::fuzz::ScratchDir() + "/" + name);
    ::mkdir(dirs[i]->c_str(), 0700);
  }
  return *dirs[i];
}

void Idx(const uint8_t* data, size_t size, bool labels) {
  const std::string& dir = Dir("idx");
  // The other file of the split is a small valid one, so the fuzzed one is read whole.
  static const bool ready = [] {
    const std::string& d = Dir("idx");
    const uint8_t images[] = {0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3, 4};
    const uint8_t label[] = {0, 0, 8, 1, 0, 0, 0, 1, 3};
    tandem::fuzz::WriteBytes(d + "/valid-images", images, sizeof images);
    tandem::fuzz::WriteBytes(d + "/valid-labels", label, sizeof label);
    return true;
  }();
  (void)ready;
  const std::string images = dir + "/train-images-idx3-ubyte.gz";
  const std::string labels_path = dir + "/train-labels-idx1-ubyte.gz";
  tandem::fuzz::WriteBytes(labels ? labels_path : images, data, size);
  const std::string other = labels ? images : labels_path;
  const std::string valid = dir + (labels ? "/valid-images" : "/valid-labels");
  ::unlink(other.c_str());
  ::link(valid.c_str(), other.c_str());
  (void)tandem::LoadFashionMnist(dir, "train");
}

void Folder(const uint8_t* data, size_t size) {
  const std::string& dir = Dir("folder");
  static const bool ready = [] {
    tandem::RawImage im;
    im.width = im.height = 2;
    im.channels = 1;
    im.pixels = {0, 64, 128, 255};
    const std::string png = *tandem::EncodePng(im);
    tandem::fuzz::WriteBytes(Dir("folder") + "/a.png", reinterpret_cast<const uint8_t*>(png.data()),
                             png.size());
    return true;
  }();
  (void)ready;
  tandem::fuzz::WriteBytes(dir + "/metadata.jsonl", data, size);
  (void)tandem::LoadImageFolder(dir, dir);
}

void Text(const uint8_t* data, size_t size) {
  const std::string path = Dir("text") + "/corpus.txt";
  tandem::fuzz::WriteBytes(path, data, size);
  absl::StatusOr<tandem::TextCorpus> corpus = tandem::LoadTextCorpus(path, 0.1, Dir("text"));
  if (corpus.ok()) (void)tandem::MinimumVocabSize(*corpus);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  switch (data[0] % 4) {
    case 0: Idx(data + 1, size - 1, /*labels=*/false); break;
    case 1: Idx(data + 1, size - 1, /*labels=*/true); break;
    case 2: Folder(data + 1, size - 1); break;
    default: Text(data + 1, size - 1); break;
  }
  return 0;
}

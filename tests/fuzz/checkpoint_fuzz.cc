// The checkpoint reader: the input is a manifest.json beside two valid weight files; the reader
// must answer DATA_LOSS (or a checkpoint whose files match the manifest's sizes and CRCs), never
// crash.
#include <sys/stat.h>

#include <cstdint>
#include <string>

#include "models/formats/safetensors.h"
#include "tests/fuzz/fuzz_files.h"
#include "trainer/checkpoint.h"

namespace {

const std::string& Folder() {
  static const std::string* folder = [] {
    auto* f = new std::string(tandem::fuzz::ScratchDir() + "/ckpt");
    ::mkdir(f->c_str(), 0700);
    tandem::SafetensorsFile w;
    tandem::TensorData t;
    t.dtype = tandem::DType::kF32;
    t.shape = {2};
    t.bytes = std::string(8, '\1');
    w.tensors["w"] = t;
    const std::string bytes = tandem::SerializeSafetensors(w);
    for (const char* name : {"/model.safetensors", "/optimizer.safetensors"}) {
      tandem::fuzz::WriteBytes(*f + name, reinterpret_cast<const uint8_t*>(bytes.data()),
                               bytes.size());
    }
    return f;
  }();
  return *folder;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tandem::fuzz::WriteBytes(Folder() + "/manifest.json", data, size);
  (void)tandem::ReadCheckpoint(Folder());
  return 0;
}

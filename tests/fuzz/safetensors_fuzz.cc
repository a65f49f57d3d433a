// The safetensors reader on arbitrary bytes: it must answer a status (DATA_LOSS naming the
// problem) or tensors that tile the data section exactly, never crash or overrun.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "models/formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<tandem::SafetensorsFile> file = tandem::ParseSafetensors(bytes);
  if (!file.ok()) return 0;
  // What parsed must serialize again and parse to the same tensors.
  absl::StatusOr<tandem::SafetensorsFile> again =
      tandem::ParseSafetensors(tandem::SerializeSafetensors(*file));
  if (!again.ok() || again->tensors.size() != file->tensors.size()) std::abort();
  return 0;
}

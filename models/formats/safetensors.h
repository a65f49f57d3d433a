// Safetensors: reading and writing the Hugging Face safetensors format (8-byte little-endian
// header length, a JSON header mapping names to {dtype, shape, data_offsets}, then the raw
// little-endian bytes). Files written here load with Python's `safetensors` package. Torch-free:
// tensors are bytes plus dtype and shape; models/ converts them to and from torch tensors.
#ifndef TANDEM_MODELS_FORMATS_SAFETENSORS_H_
#define TANDEM_MODELS_FORMATS_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tandem {

enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

// Safetensors' dtype names: "F32", "BF16", ...
const char* DTypeName(DType dtype);
absl::StatusOr<DType> DTypeFromName(const std::string& name);
int DTypeSize(DType dtype);

struct TensorData {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string bytes;  // row-major, little-endian; size == numel * DTypeSize(dtype)

  int64_t numel() const;
  // A float32 tensor from values (copied).
  static TensorData F32(std::vector<int64_t> shape, const float* values);
};

// Tensors by name: a safetensors file's contents, a model's weights, an optimizer's state. The one
// declaration every layer uses.
using TensorMap = std::map<std::string, TensorData>;

struct SafetensorsFile {
  TensorMap tensors;
  std::map<std::string, std::string> metadata;  // the "__metadata__" entry
};

// Writes atomically: a temporary file beside `path`, fsync, rename, fsync of the folder. Tensors
// are laid out in name order, the header padded with spaces to a multiple of 8 bytes.
absl::Status WriteSafetensors(const std::string& path, const SafetensorsFile& file);
std::string SerializeSafetensors(const SafetensorsFile& file);

// Validates everything before trusting it: header length against the file size, JSON syntax,
// dtypes, that each tensor's offsets lie in the data, match its shape, and do not overlap.
// NOT_FOUND when the file is missing; DATA_LOSS when it is truncated or malformed.
absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path);
absl::StatusOr<SafetensorsFile> ParseSafetensors(const std::string& bytes);

}  // namespace tandem

#endif  // TANDEM_MODELS_FORMATS_SAFETENSORS_H_

#include "models/formats/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/io_faults.h"
#include "nlohmann/json.hpp"

// The format is little-endian; tensors are stored as raw host bytes.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes little-endian");

namespace tandem {
namespace {

constexpr char kMetadataKey[] = "__metadata__";
// The reference implementation refuses headers above 100 MB; so do we, before allocating.
constexpr uint64_t kMaxHeaderSize = 100'000'000;

struct DTypeInfo {
  DType dtype;
  const char* name;
  int size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2}, {DType::kBF16, "BF16", 2},
    {DType::kF64, "F64", 8}, {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2}, {DType::kI8, "I8", 1},   {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
};

const DTypeInfo* FindDType(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return &info;
  }
  return nullptr;
}

// numel * element size, or false when it does not fit in 64 bits (a corrupt shape).
bool ByteSize(const std::vector<int64_t>& shape, int element_size, uint64_t* out) {
  uint64_t n = static_cast<uint64_t>(element_size);
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  *out = n;
  return true;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&s, i ? "," : "", shape[i]);
  return s + "]";
}

absl::Status ValidateForWrite(const SafetensorsFile& file) {
  for (const auto& [name, t] : file.tensors) {
    if (name.empty()) return absl::InvalidArgumentError("a tensor has an empty name");
    if (name == kMetadataKey) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", kMetadataKey, "\" is reserved and cannot name a tensor"));
    }
    const DTypeInfo* info = FindDType(t.dtype);
    if (info == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\" has an unknown dtype"));
    }
    uint64_t expected = 0;
    if (!ByteSize(t.shape, info->size, &expected)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\" has an invalid shape ",
                                                     ShapeString(t.shape)));
    }
    if (expected != t.bytes.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor \"", name, "\" (", info->name, " ", ShapeString(t.shape), ") needs ", expected,
          " bytes but holds ", t.bytes.size()));
    }
  }
  return absl::OkStatus();
}

// The 8-byte length plus the space-padded JSON header; the data section follows, tensors in
// name order (std::map order), back to back.
std::string SerializeHeader(const SafetensorsFile& file) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!file.metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : file.metadata) meta[key] = value;
    header[kMetadataKey] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : file.tensors) {
    const DTypeInfo* info = FindDType(t.dtype);
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = info != nullptr ? info->name : "U8";
    entry["shape"] = t.shape;
    entry["data_offsets"] = {offset, offset + t.bytes.size()};
    header[name] = std::move(entry);
    offset += t.bytes.size();
  }
  // Invalid UTF-8 in a name cannot be represented in JSON; replace rather than throw.
  std::string json = header.dump(-1, ' ', /*ensure_ascii=*/false,
                                 nlohmann::ordered_json::error_handler_t::replace);
  // Pad so the data section starts 8-byte aligned, as the reference writer does.
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += json;
  return out;
}

absl::Status ErrnoStatus(int err, absl::string_view what, absl::string_view path) {
  std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status WriteAll(int fd, const char* data, size_t size, const std::string& path) {
  while (size > 0) {
    ssize_t n = FaultableWrite(fd, data, std::min<size_t>(size, 1 << 30), path);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "write", path);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::string ParentDir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Header, then each tensor's bytes straight from `file` (no second copy of the weights).
absl::Status WriteContents(int fd, const SafetensorsFile& file, const std::string& path) {
  std::string header = SerializeHeader(file);
  if (auto s = WriteAll(fd, header.data(), header.size(), path); !s.ok()) return s;
  for (const auto& [name, t] : file.tensors) {
    if (auto s = WriteAll(fd, t.bytes.data(), t.bytes.size(), path); !s.ok()) return s;
  }
  if (FaultableFsync(fd, path) != 0) return ErrnoStatus(errno, "fsync", path);
  return absl::OkStatus();
}

absl::Status DataLoss(absl::string_view what) {
  return absl::DataLossError(absl::StrCat("malformed safetensors: ", what));
}

absl::StatusOr<TensorData> ParseEntry(const std::string& name, const nlohmann::json& entry,
                                      uint64_t* begin, uint64_t* end) {
  if (!entry.is_object()) return DataLoss(absl::StrCat("entry \"", name, "\" is not an object"));
  TensorData t;
  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return DataLoss(absl::StrCat("tensor \"", name, "\" has no string \"dtype\""));
  }
  absl::StatusOr<DType> dtype = DTypeFromName(dtype_it->get<std::string>());
  if (!dtype.ok()) {
    return DataLoss(absl::StrCat("tensor \"", name, "\": ", dtype.status().message()));
  }
  t.dtype = *dtype;

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return DataLoss(absl::StrCat("tensor \"", name, "\" has no \"shape\" array"));
  }
  for (const nlohmann::json& d : *shape_it) {
    if (!d.is_number_integer() || (d.is_number_unsigned() &&
                                   d.get<uint64_t>() > static_cast<uint64_t>(
                                                           std::numeric_limits<int64_t>::max()))) {
      return DataLoss(absl::StrCat("tensor \"", name, "\" has a non-integer dimension ", d.dump()));
    }
    int64_t v = d.get<int64_t>();
    if (v < 0) {
      return DataLoss(absl::StrCat("tensor \"", name, "\" has a negative dimension ", v));
    }
    t.shape.push_back(v);
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
    return DataLoss(absl::StrCat("tensor \"", name,
                                 "\" needs \"data_offsets\": [begin, end] (non-negative integers)"));
  }
  *begin = (*offsets_it)[0].get<uint64_t>();
  *end = (*offsets_it)[1].get<uint64_t>();
  if (*end < *begin) {
    return DataLoss(absl::StrCat("tensor \"", name, "\" has data_offsets [", *begin, ", ", *end,
                                 "] with end before begin"));
  }
  uint64_t expected = 0;
  if (!ByteSize(t.shape, DTypeSize(t.dtype), &expected)) {
    return DataLoss(absl::StrCat("tensor \"", name, "\" has an overflowing shape ",
                                 ShapeString(t.shape)));
  }
  if (*end - *begin != expected) {
    return DataLoss(absl::StrCat("tensor \"", name, "\" (", DTypeName(t.dtype), " ",
                                 ShapeString(t.shape), ") needs ", expected,
                                 " bytes but data_offsets [", *begin, ", ", *end, "] span ",
                                 *end - *begin));
  }
  return t;
}

// Where each tensor's bytes lie in the data section.
struct Span {
  uint64_t begin;
  uint64_t end;
  std::string name;
  bool operator<(const Span& o) const {
    return std::tie(begin, end, name) < std::tie(o.begin, o.end, o.name);
  }
};

uint64_t ReadU64Le(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

absl::Status CheckHeaderSize(uint64_t header_size, uint64_t total_size) {
  if (header_size > total_size - 8) {
    return DataLoss(absl::StrCat("header length ", header_size, " runs past the end of the ",
                                 total_size, "-byte file (truncated or not safetensors)"));
  }
  if (header_size > kMaxHeaderSize) {
    return DataLoss(absl::StrCat("header length ", header_size, " exceeds the ", kMaxHeaderSize,
                                 "-byte limit"));
  }
  if (header_size < 2) return DataLoss("header is too short to be a JSON object");
  return absl::OkStatus();
}

// Parses and validates the JSON header against a data section of `data_size` bytes: tensors get
// their dtype and shape (bytes left empty), `spans` where their bytes are.
absl::Status ParseHeader(const char* json, size_t json_size, uint64_t data_size,
                         SafetensorsFile* file, std::vector<Span>* spans) {
  nlohmann::json header = nlohmann::json::parse(json, json + json_size, /*cb=*/nullptr,
                                                /*allow_exceptions=*/false);
  if (header.is_discarded()) {
    return DataLoss(absl::StrCat("the ", json_size, "-byte header is not valid JSON"));
  }
  if (!header.is_object()) return DataLoss("the header is not a JSON object");

  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) return DataLoss("\"__metadata__\" is not an object");
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) {
          return DataLoss(absl::StrCat("\"__metadata__\" value for \"", mkey,
                                       "\" is not a string"));
        }
        file->metadata[mkey] = mvalue.get<std::string>();
      }
      continue;
    }
    uint64_t begin = 0, end = 0;
    absl::StatusOr<TensorData> t = ParseEntry(key, value, &begin, &end);
    if (!t.ok()) return t.status();
    if (end > data_size) {
      return DataLoss(absl::StrCat("tensor \"", key, "\" data_offsets [", begin, ", ", end,
                                   "] run past the ", data_size,
                                   "-byte data section (truncated?)"));
    }
    spans->push_back({begin, end, key});
    file->tensors.emplace(key, *std::move(t));
  }

  // The tensors must tile the data section exactly: no overlap, no gap, nothing left over.
  std::sort(spans->begin(), spans->end());
  uint64_t covered = 0;
  for (const Span& span : *spans) {
    if (span.begin < covered) {
      return DataLoss(absl::StrCat("tensor \"", span.name, "\" data_offsets [", span.begin, ", ",
                                   span.end, "] overlap the previous tensor (which ends at ",
                                   covered, ")"));
    }
    if (span.begin > covered) {
      return DataLoss(absl::StrCat("bytes [", covered, ", ", span.begin,
                                   ") of the data section belong to no tensor (before \"",
                                   span.name, "\")"));
    }
    covered = span.end;
  }
  if (covered != data_size) {
    return DataLoss(absl::StrCat("the data section is ", data_size, " bytes but tensors cover ",
                                 covered, " (truncated, or trailing garbage)"));
  }
  return absl::OkStatus();
}

absl::Status PreadAll(int fd, char* out, size_t size, uint64_t offset, const std::string& path) {
  while (size > 0) {
    ssize_t n = ::pread(fd, out, std::min<size_t>(size, 1 << 30), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "read", path);
    }
    if (n == 0) {
      return absl::DataLossError(
          absl::StrCat(path, ": malformed safetensors: file shrank while being read"));
    }
    out += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

const char* DTypeName(DType dtype) {
  const DTypeInfo* info = FindDType(dtype);
  return info != nullptr ? info->name : "UNKNOWN";
}

absl::StatusOr<DType> DTypeFromName(const std::string& name) {
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.name) return info.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unsupported dtype \"", name, "\" (supported: F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL)"));
}

int DTypeSize(DType dtype) {
  const DTypeInfo* info = FindDType(dtype);
  return info != nullptr ? info->size : 0;
}

int64_t TensorData::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

TensorData TensorData::F32(std::vector<int64_t> shape, const float* values) {
  TensorData t;
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  const size_t bytes = static_cast<size_t>(t.numel()) * sizeof(float);
  if (bytes > 0) t.bytes.assign(reinterpret_cast<const char*>(values), bytes);
  return t;
}

std::string SerializeSafetensors(const SafetensorsFile& file) {
  std::string out = SerializeHeader(file);
  for (const auto& [name, t] : file.tensors) out += t.bytes;
  return out;
}

absl::Status WriteSafetensors(const std::string& path, const SafetensorsFile& file) {
  if (auto s = ValidateForWrite(file); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("writing ", path, ": ", s.message()));
  }
  // Readers never see a partial file: write beside the target, make it durable, then rename
  // over it and make the rename durable too.
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, "create", tmp);
  absl::Status status = WriteContents(fd, file, tmp);
  if (::close(fd) != 0 && status.ok()) status = ErrnoStatus(errno, "close", tmp);
  if (status.ok() && FaultableRename(tmp.c_str(), path.c_str()) != 0) {
    status = ErrnoStatus(errno, absl::StrCat("rename ", tmp, " to"), path);
  }
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return status;
  }
  const std::string dir = ParentDir(path);
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return ErrnoStatus(errno, "open folder", dir);
  if (FaultableFsync(dir_fd, dir) != 0) status = ErrnoStatus(errno, "fsync folder", dir);
  ::close(dir_fd);
  return status;
}

absl::StatusOr<SafetensorsFile> ParseSafetensors(const std::string& bytes) {
  if (bytes.size() < 8) {
    return DataLoss(absl::StrCat("file is ", bytes.size(),
                                 " bytes, too short for the 8-byte header length (truncated?)"));
  }
  const uint64_t header_size = ReadU64Le(bytes.data());
  if (auto s = CheckHeaderSize(header_size, bytes.size()); !s.ok()) return s;
  const uint64_t data_size = bytes.size() - 8 - header_size;
  const char* data = bytes.data() + 8 + header_size;

  SafetensorsFile file;
  std::vector<Span> spans;
  if (auto s = ParseHeader(bytes.data() + 8, header_size, data_size, &file, &spans); !s.ok()) {
    return s;
  }
  for (const Span& span : spans) {
    file.tensors[span.name].bytes.assign(data + span.begin, span.end - span.begin);
  }
  return file;
}

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "open", path);
  // Closes fd on every return below.
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};

  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoStatus(errno, "stat", path);
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(path, " is not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  auto with_path = [&path](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  };
  if (file_size < 8) {
    return with_path(DataLoss(absl::StrCat(
        "file is ", file_size, " bytes, too short for the 8-byte header length (truncated?)")));
  }
  // Header first, validated against the file size; then each tensor is read straight into its
  // own buffer, so a large checkpoint is never held in memory twice.
  char length[8];
  if (auto s = PreadAll(fd, length, 8, 0, path); !s.ok()) return s;
  const uint64_t header_size = ReadU64Le(length);
  if (auto s = CheckHeaderSize(header_size, file_size); !s.ok()) return with_path(s);
  std::string header(static_cast<size_t>(header_size), '\0');
  if (auto s = PreadAll(fd, header.data(), header.size(), 8, path); !s.ok()) return s;

  const uint64_t data_start = 8 + header_size;
  SafetensorsFile file;
  std::vector<Span> spans;
  if (auto s = ParseHeader(header.data(), header.size(), file_size - data_start, &file, &spans);
      !s.ok()) {
    return with_path(s);
  }
  for (const Span& span : spans) {
    std::string& bytes = file.tensors[span.name].bytes;
    bytes.resize(static_cast<size_t>(span.end - span.begin));
    if (auto s = PreadAll(fd, bytes.data(), bytes.size(), data_start + span.begin, path);
        !s.ok()) {
      return s;
    }
  }
  return file;
}

}  // namespace tandem

#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/match.h"
#include "base/io_faults.h"
#include "models/model_dir.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

namespace fs = std::filesystem;

constexpr char kPrefix[] = "step-";
constexpr char kTmpPrefix[] = ".tmp-step-";
constexpr char kModelFile[] = "model.safetensors";
constexpr char kOptimizerFile[] = "optimizer.safetensors";
constexpr char kManifestFile[] = "manifest.json";

std::string FolderName(int64_t step) { return absl::StrFormat("%s%010d", kPrefix, step); }

uint32_t Crc32(const std::string& bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  // zlib takes uInt lengths: feed large buffers in pieces.
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    const uInt n = static_cast<uInt>(std::min<size_t>(left, 1u << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(p), n);
    p += n;
    left -= n;
  }
  return static_cast<uint32_t>(crc);
}

absl::Status FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return absl::InternalError(absl::StrCat("open ", dir, ": ", std::strerror(errno)));
  const int rc = FaultableFsync(fd, dir);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return absl::InternalError(absl::StrCat("fsync ", dir, ": ", std::strerror(err)));
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteCheckpoint(const std::string& dir, const Checkpoint& ckpt) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  const std::string final_path = dir + "/" + FolderName(ckpt.step);
  const std::string tmp = absl::StrFormat("%s/%s%010d.%d", dir, kTmpPrefix, ckpt.step, ::getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", ec.message()));

  nlohmann::json files = nlohmann::json::object();
  auto write = [&](const char* name, const TensorMap& tensors) {
    SafetensorsFile f;
    f.tensors = tensors;
    const std::string bytes = SerializeSafetensors(f);
    files[name] = {{"bytes", bytes.size()}, {"crc32", Crc32(bytes)}};
    return WriteFileAtomically(tmp + "/" + name, bytes);
  };
  absl::Status s = write(kModelFile, ckpt.model);
  if (s.ok()) s = write(kOptimizerFile, ckpt.optimizer);
  if (s.ok()) {
    nlohmann::json manifest = {
        {"step", ckpt.step}, {"state", ckpt.state}, {"files", files}};
    s = WriteFileAtomically(tmp + "/" + kManifestFile, manifest.dump(2) + "\n");
  }
  if (s.ok()) {
    // Replace a checkpoint of the same step (a re-run after a crash) by the new one.
    fs::remove_all(final_path, ec);
    if (FaultableRename(tmp.c_str(), final_path.c_str()) != 0) {
      s = absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", std::strerror(errno)));
    }
  }
  if (s.ok()) s = FsyncDir(dir);
  if (!s.ok()) fs::remove_all(tmp, ec);
  return s;
}

std::vector<int64_t> ListCheckpointSteps(const std::string& dir) {
  std::vector<int64_t> steps;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    int64_t step;
    if (absl::StartsWith(name, kPrefix) &&
        absl::SimpleAtoi(name.substr(std::strlen(kPrefix)), &step)) {
      steps.push_back(step);
    }
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

absl::StatusOr<Checkpoint> ReadCheckpoint(const std::string& folder) {
  absl::StatusOr<std::string> manifest_bytes = ReadFile(folder + "/" + kManifestFile);
  if (!manifest_bytes.ok()) {
    return absl::DataLossError(absl::StrCat(folder, ": no manifest (incomplete checkpoint)"));
  }
  nlohmann::json manifest = nlohmann::json::parse(*manifest_bytes, nullptr, false);
  if (manifest.is_discarded() || !manifest.is_object() || !manifest.contains("files") ||
      !manifest.contains("step")) {
    return absl::DataLossError(absl::StrCat(folder, "/", kManifestFile, " is malformed"));
  }
  Checkpoint ckpt;
  try {
    ckpt.step = manifest["step"].get<int64_t>();
    if (manifest.contains("state")) {
      ckpt.state = manifest["state"].get<std::map<std::string, std::string>>();
    }
    for (const char* name : {kModelFile, kOptimizerFile}) {
      const auto& entry = manifest["files"].at(name);
      const std::string path = folder + "/" + name;
      absl::StatusOr<std::string> bytes = ReadFile(path);
      if (!bytes.ok()) return absl::DataLossError(absl::StrCat(path, " is missing"));
      if (bytes->size() != entry.at("bytes").get<size_t>()) {
        return absl::DataLossError(absl::StrCat(path, " is truncated: ", bytes->size(), " of ",
                                                entry.at("bytes").get<size_t>(), " bytes"));
      }
      if (Crc32(*bytes) != entry.at("crc32").get<uint32_t>()) {
        return absl::DataLossError(absl::StrCat(path, " fails its CRC-32 check (corrupt)"));
      }
      absl::StatusOr<SafetensorsFile> f = ParseSafetensors(*bytes);
      if (!f.ok()) return absl::DataLossError(absl::StrCat(path, ": ", f.status().message()));
      (std::strcmp(name, kModelFile) == 0 ? ckpt.model : ckpt.optimizer) = std::move(f->tensors);
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(folder, "/", kManifestFile, ": ", e.what()));
  }
  return ckpt;
}

absl::StatusOr<Checkpoint> LoadLatestCheckpoint(const std::string& dir,
                                                std::vector<std::string>* skipped) {
  std::vector<int64_t> steps = ListCheckpointSteps(dir);
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    absl::StatusOr<Checkpoint> ckpt = ReadCheckpoint(dir + "/" + FolderName(*it));
    if (ckpt.ok()) return ckpt;
    if (skipped) skipped->push_back(std::string(ckpt.status().message()));
  }
  return absl::NotFoundError(absl::StrCat("no usable checkpoint in ", dir));
}

absl::Status PruneCheckpoints(const std::string& dir, int keep) {
  keep = std::max(1, keep);
  std::vector<int64_t> steps = ListCheckpointSteps(dir);
  std::error_code ec;
  for (size_t i = 0; i + keep < steps.size(); ++i) {
    fs::remove_all(dir + "/" + FolderName(steps[i]), ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot delete a checkpoint: ", ec.message()));
  }
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (absl::StartsWith(e.path().filename().string(), kTmpPrefix)) fs::remove_all(e.path(), ec);
  }
  return absl::OkStatus();
}

}  // namespace tandem

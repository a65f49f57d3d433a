#include "models/model_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "base/io_faults.h"
#include "nlohmann/json.hpp"

namespace tandem {
namespace {

namespace fs = std::filesystem;

absl::Status ErrnoStatus(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

absl::Status FsyncPath(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags);
  if (fd < 0) return ErrnoStatus("open", path);
  int rc = FaultableFsync(fd, path);
  const int err = errno;
  ::close(fd);
  errno = err;
  if (rc != 0) return ErrnoStatus("fsync", path);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!fs::exists(path)) return absl::NotFoundError(absl::StrCat("no such file: ", path));
    return ErrnoStatus("cannot read", path);
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return ErrnoStatus("error reading", path);
  return ss.str();
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& contents) {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("cannot create", tmp);
  const char* p = contents.data();
  size_t left = contents.size();
  while (left > 0) {
    ssize_t n = FaultableWrite(fd, p, left, tmp);
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status s = ErrnoStatus("cannot write", tmp);
      ::close(fd);
      ::unlink(tmp.c_str());
      return s;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (FaultableFsync(fd, tmp) != 0) {
    absl::Status s = ErrnoStatus("fsync", tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  }
  ::close(fd);
  if (FaultableRename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status s = ErrnoStatus("cannot rename to", path);
    ::unlink(tmp.c_str());
    return s;
  }
  // The rename is durable only once the folder entry is.
  std::string dir = fs::path(path).parent_path().string();
  return FsyncPath(dir.empty() ? "." : dir, O_RDONLY | O_DIRECTORY);
}

const char* TokenizerFileName(TokenizerKind kind) {
  return kind == TokenizerKind::kLlama2c ? kLlama2cTokenizerFile : kTokenizerFile;
}

absl::StatusOr<TokenizerKind> FindTokenizer(const std::string& dir) {
  std::error_code ec;
  const bool sentencepiece = fs::exists(dir + "/" + kTokenizerFile, ec);
  const bool llama2c = fs::exists(dir + "/" + kLlama2cTokenizerFile, ec);
  if (sentencepiece && llama2c) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, " holds both ", kTokenizerFile, " (SentencePiece) and ", kLlama2cTokenizerFile,
        " (llama2.c); remove the one the model was not trained with"));
  }
  if (!sentencepiece && !llama2c) {
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " has no tokenizer (",
                                            kTokenizerFile, " or ", kLlama2cTokenizerFile, ")"));
  }
  return llama2c ? TokenizerKind::kLlama2c : TokenizerKind::kSentencePiece;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadModelTokenizer(const ModelDir& dir) {
  return LoadTokenizer(dir.tokenizer_kind, dir.tokenizer_path());
}

absl::StatusOr<ModelDir> ReadModelDir(const std::string& path) {
  ModelDir dir;
  dir.path = path;
  if (!fs::is_directory(path)) {
    return absl::NotFoundError(absl::StrCat("model directory not found: ", path));
  }
  const std::string config_path = path + "/" + kConfigFile;
  absl::StatusOr<std::string> config = ReadFile(config_path);
  if (!config.ok()) return config.status();
  dir.config_json = *config;
  nlohmann::json j = nlohmann::json::parse(*config, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, " is not a JSON object"));
  }
  const std::string kind = j.value("kind", "text");
  if (kind == "text") {
    dir.kind = ModelKind::kText;
    absl::StatusOr<LlamaConfig> llama = LlamaConfig::FromJson(*config);
    if (!llama.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(config_path, ": ", llama.status().message()));
    }
    dir.llama = *llama;
  } else if (kind == "image") {
    dir.kind = ModelKind::kImage;
    absl::StatusOr<DiffusionConfig> diffusion = DiffusionConfig::FromJson(*config);
    if (!diffusion.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(config_path, ": ", diffusion.status().message()));
    }
    dir.diffusion = *diffusion;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": unknown kind \"", kind, "\" (expected text or image)"));
  }
  if (!fs::exists(path + "/" + kWeightsFile)) {
    return absl::NotFoundError(absl::StrCat("model directory ", path, " has no ", kWeightsFile));
  }
  absl::StatusOr<TokenizerKind> tokenizer = FindTokenizer(path);
  if (!tokenizer.ok()) return tokenizer.status();
  dir.tokenizer_kind = *tokenizer;
  const std::string meta_path = path + "/" + kMetaFile;
  if (fs::exists(meta_path)) {
    absl::StatusOr<std::string> meta = ReadFile(meta_path);
    if (!meta.ok()) return meta.status();
    nlohmann::json m = nlohmann::json::parse(*meta, nullptr, false);
    if (m.is_discarded() || !m.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(meta_path, " is not a JSON object"));
    }
    dir.provenance.source = m.value("source", "");
    dir.provenance.train_job_id = m.value("train_job_id", "");
    dir.provenance.train_step = m.value("train_step", int64_t{0});
  }
  return dir;
}

namespace {

absl::Status WriteModelDir(const std::string& path, const std::string& config_json,
                           const SafetensorsFile& weights, const TokenizerFile& tokenizer,
                           const ModelProvenance& provenance) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create ", path, ": ", ec.message()));
  }
  // Weights and tokenizer first, config last: a directory with a config is complete.
  absl::Status s = WriteSafetensors(path + "/" + kWeightsFile, weights);
  if (!s.ok()) return s;
  s = WriteFileAtomically(path + "/" + TokenizerFileName(tokenizer.kind), tokenizer.bytes);
  if (!s.ok()) return s;
  const TokenizerKind other = tokenizer.kind == TokenizerKind::kLlama2c
                                  ? TokenizerKind::kSentencePiece
                                  : TokenizerKind::kLlama2c;
  fs::remove(path + "/" + TokenizerFileName(other), ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot remove the old ", TokenizerFileName(other),
                                            " in ", path, ": ", ec.message()));
  }
  nlohmann::json meta = {{"source", provenance.source},
                         {"train_job_id", provenance.train_job_id},
                         {"train_step", provenance.train_step}};
  s = WriteFileAtomically(path + "/" + kMetaFile, meta.dump(2) + "\n");
  if (!s.ok()) return s;
  return WriteFileAtomically(path + "/" + kConfigFile, config_json + "\n");
}

}  // namespace

absl::Status WriteTextModelDir(const std::string& path, const LlamaConfig& config,
                               const SafetensorsFile& weights, const TokenizerFile& tokenizer,
                               const ModelProvenance& provenance) {
  return WriteModelDir(path, config.ToJson(), weights, tokenizer, provenance);
}

absl::Status WriteImageModelDir(const std::string& path, const DiffusionConfig& config,
                                const SafetensorsFile& weights, const TokenizerFile& tokenizer,
                                const ModelProvenance& provenance) {
  return WriteModelDir(path, config.ToJson(), weights, tokenizer, provenance);
}

}  // namespace tandem

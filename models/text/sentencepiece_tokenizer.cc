#include "models/text/sentencepiece_tokenizer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "base/io_faults.h"

#include <dlfcn.h>

#include <cstdlib>

#include "models/text/sentencepiece_api.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TANDEM_SANITIZER_BUILD 1
#endif
#endif
#ifndef TANDEM_SANITIZER_BUILD
#define TANDEM_SANITIZER_BUILD 0
#endif

namespace tandem {
namespace {

constexpr int kUnkId = 0;
constexpr int kBosId = 1;
constexpr int kEosId = 2;
// <unk>, <s>, </s> and the 256 byte-fallback pieces come before any learned piece.
constexpr int kReservedPieces = 3 + 256;

// The module is loaded once per process; failure is reported on every use.
absl::StatusOr<const tandem_spm_api*> Api() {
  static absl::StatusOr<const tandem_spm_api*>* api = [] {
    constexpr char kModule[] = "libtandem_sentencepiece.so";
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("TANDEM_SENTENCEPIECE_MODULE"); env && *env) {
      candidates.push_back(env);
    }
    char exe[4096];
    ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
      exe[n] = '\0';
      std::string dir(exe);
      dir = dir.substr(0, dir.find_last_of('/'));
      candidates.push_back(dir + "/" + kModule);
      candidates.push_back(dir + "/../lib/" + kModule);
    }
    candidates.push_back(kModule);
    std::string errors;
    for (const std::string& path : candidates) {
#if TANDEM_SANITIZER_BUILD
      // Sanitizer runtimes refuse RTLD_DEEPBIND; a link namespace of its own isolates the
      // module's protobuf as well (the module is built without instrumentation for it).
      void* handle = ::dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
#else
      // DEEPBIND: SentencePiece binds to its own bundled protobuf, not the process's libprotobuf.
      void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
#endif
      if (handle == nullptr) {
        const char* e = ::dlerror();
        absl::StrAppend(&errors, "\n  ", e ? e : path);
        continue;
      }
      using Fn = const tandem_spm_api* (*)();
      auto fn = reinterpret_cast<Fn>(::dlsym(handle, "tandem_sentencepiece_api"));
      const tandem_spm_api* table = fn ? fn() : nullptr;
      if (table == nullptr || table->version != TANDEM_SENTENCEPIECE_API_VERSION) {
        absl::StrAppend(&errors, "\n  ", path, ": not a compatible tokenizer module");
        continue;
      }
      return new absl::StatusOr<const tandem_spm_api*>(table);
    }
    return new absl::StatusOr<const tandem_spm_api*>(absl::FailedPreconditionError(
        absl::StrCat("cannot load the tokenizer module ", kModule,
                     " (set TANDEM_SENTENCEPIECE_MODULE to its path):", errors)));
  }();
  return *api;
}

// Takes ownership of a module-allocated message.
std::string TakeMessage(const tandem_spm_api* api, char* err) {
  std::string m = err ? err : "unknown error";
  if (err) api->free_buf(err);
  return m;
}

bool FileExists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

absl::Status ErrnoError(absl::string_view what, const std::string& path, int err) {
  std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(message);
  return absl::InternalError(message);
}

std::string ParentDir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Readers never see a partial model: write "<path>.tmp.<pid>", fsync, rename over `path`, fsync
// the folder so the rename itself survives a crash.
absl::Status WriteAtomically(const std::string& path, const std::string& contents) {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("create", tmp, errno);
  absl::Status status;
  const char* data = contents.data();
  size_t left = contents.size();
  while (status.ok() && left > 0) {
    ssize_t n = FaultableWrite(fd, data, left, tmp);
    if (n < 0) {
      if (errno != EINTR) status = ErrnoError("write", tmp, errno);
      continue;
    }
    data += n;
    left -= static_cast<size_t>(n);
  }
  if (status.ok() && FaultableFsync(fd, tmp) != 0) status = ErrnoError("fsync", tmp, errno);
  if (::close(fd) != 0 && status.ok()) status = ErrnoError("close", tmp, errno);
  if (status.ok() && FaultableRename(tmp.c_str(), path.c_str()) != 0) {
    status = ErrnoError(absl::StrCat("rename ", tmp, " to"), path, errno);
  }
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return status;
  }
  const std::string dir = ParentDir(path);
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return ErrnoError("open folder", dir, errno);
  if (FaultableFsync(dir_fd, dir) != 0) status = ErrnoError("fsync folder", dir, errno);
  ::close(dir_fd);
  return status;
}

// SentencePiece has one global seed (0xFFFFFFFF means "use std::random_device").
unsigned int SentencePieceSeed(uint64_t seed) {
  auto folded = static_cast<unsigned int>(seed ^ (seed >> 32));
  return folded == 0xFFFFFFFFu ? 0xFFFFFFFEu : folded;
}

}  // namespace

SentencePieceTokenizer::~SentencePieceTokenizer() {
  if (sp_) api_->destroy(sp_);
}

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Load(
    const std::string& model_path) {
  if (!FileExists(model_path)) {
    return absl::NotFoundError(absl::StrCat("tokenizer model not found: ", model_path));
  }
  absl::StatusOr<const tandem_spm_api*> api = Api();
  if (!api.ok()) return api.status();
  int code = 0;
  char* err = nullptr;
  void* sp = (*api)->load(model_path.c_str(), &code, &err);
  if (sp == nullptr) {
    std::string message = TakeMessage(*api, err);
    if (code == static_cast<int>(absl::StatusCode::kNotFound)) {
      return absl::NotFoundError(absl::StrCat("loading tokenizer ", model_path, ": ", message));
    }
    // A present but unreadable or corrupt model is the caller's bad input.
    return absl::InvalidArgumentError(absl::StrCat("loading tokenizer ", model_path,
                                                   ": not a valid SentencePiece model (",
                                                   message, ")"));
  }
  return std::unique_ptr<SentencePieceTokenizer>(new SentencePieceTokenizer(*api, sp));
}

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>>
SentencePieceTokenizer::FromSerialized(const std::string& proto_bytes) {
  absl::StatusOr<const tandem_spm_api*> api = Api();
  if (!api.ok()) return api.status();
  int code = 0;
  char* err = nullptr;
  void* sp = (*api)->load_serialized(proto_bytes.data(), proto_bytes.size(), &code, &err);
  if (sp == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not a valid serialized SentencePiece model (", proto_bytes.size(), " bytes): ",
        TakeMessage(*api, err)));
  }
  return std::unique_ptr<SentencePieceTokenizer>(new SentencePieceTokenizer(*api, sp));
}

absl::Status SentencePieceTokenizer::Train(const std::string& corpus_path,
                                           const std::string& model_path,
                                           const TokenizerTrainOptions& options) {
  if (options.vocab_size <= kReservedPieces) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vocab_size (", options.vocab_size, ") must exceed ", kReservedPieces,
        ": <unk>, <s>, </s> and 256 byte-fallback pieces are always present"));
  }
  if (options.model_type != "bpe" && options.model_type != "unigram") {
    return absl::InvalidArgumentError(absl::StrCat("model_type (\"", options.model_type,
                                                   "\") must be \"bpe\" or \"unigram\""));
  }
  // SentencePiece rejects sampling 1..100 sentences.
  if (options.max_sentences < 0 || (options.max_sentences > 0 && options.max_sentences <= 100)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_sentences (", options.max_sentences, ") must be 0 (every line) or more than 100"));
  }
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_threads (", options.num_threads, ") must be >= 0"));
  }
  if (!FileExists(corpus_path)) {
    return absl::NotFoundError(absl::StrCat("training corpus not found: ", corpus_path));
  }
  if (model_path.empty()) return absl::InvalidArgumentError("model_path is empty");

  int num_threads = options.num_threads;
  if (num_threads == 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  // SentencePiece refuses more than 128 threads; more would not help a tokenizer anyway.
  num_threads = std::clamp(num_threads, 1, 128);

  // With an output string SentencePiece returns the model in memory and writes no files
  // (model_prefix must then be empty); it is written here atomically. Nothing path-dependent
  // but the corpus path ends up in the model, so the same inputs give byte-identical models.
  std::unordered_map<std::string, std::string> args = {
      {"input", corpus_path},
      {"vocab_size", absl::StrCat(options.vocab_size)},
      {"model_type", options.model_type},
      // Every byte is representable, so no character ever maps to <unk>; full coverage is then
      // cheap (rare characters cost a piece each, but never an <unk>).
      {"byte_fallback", "true"},
      {"character_coverage", "1.0"},
      {"unk_id", absl::StrCat(kUnkId)},
      {"bos_id", absl::StrCat(kBosId)},
      {"eos_id", absl::StrCat(kEosId)},
      {"pad_id", "-1"},
      {"input_sentence_size", absl::StrCat(options.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"split_digits", "true"},
      {"num_threads", absl::StrCat(num_threads)},
      {"max_sentence_length", "16384"},
      // Identity normalisation and kept whitespace make Decode(Encode(x)) == x byte for byte.
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"train_extremely_large_corpus", "false"},
      // Only errors: training logs thousands of INFO lines to stderr otherwise.
      {"minloglevel", "2"},
      {"hard_vocab_limit", options.hard_vocab_limit ? "true" : "false"},
  };

  absl::StatusOr<const tandem_spm_api*> api = Api();
  if (!api.ok()) return api.status();
  std::vector<const char*> keys, values;
  for (const auto& [k, v] : args) {
    keys.push_back(k.c_str());
    values.push_back(v.c_str());
  }
  std::string model;
  int code = 0;
  std::string message;
  {
    // SentencePiece's seed and log level are process-wide: one training at a time.
    static absl::Mutex mu(absl::kConstInit);
    absl::MutexLock lock(&mu);
    // The seed is meant for SentencePiece's sampling of input sentences (0.1.97's sampler is
    // deterministic whatever the seed, so there it changes nothing). Training on a fresh thread
    // keeps any per-thread generator, seeded on first use, from carrying state from an earlier
    // training over to this one.
    std::thread trainer([&] {
      char* out = nullptr;
      size_t out_len = 0;
      char* err = nullptr;
      code = (*api)->train(keys.data(), values.data(), keys.size(),
                           SentencePieceSeed(options.seed), &out, &out_len, &err);
      if (code == 0) {
        model.assign(out, out_len);
        (*api)->free_buf(out);
      } else {
        message = TakeMessage(*api, err);
      }
    });
    trainer.join();
  }
  if (code != 0) {
    const std::string context = absl::StrCat("training a tokenizer on ", corpus_path);
    // SentencePiece reports a vocabulary the corpus cannot fill as INTERNAL; it is the caller's
    // choice of vocab_size (or corpus) that is wrong.
    if (message.find("Vocabulary size too high") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(context, ": ", message));
    }
    if (message.find("smaller than required_chars") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          context, ": vocab_size ", options.vocab_size,
          " has no room for every character of the corpus besides the 259 control and byte "
          "pieces (SentencePiece: ", message, "); use a larger vocab_size"));
    }
    if (message.find("!sentences_.empty()") != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(context, ": the corpus has no non-empty lines to learn from"));
    }
    return absl::Status(static_cast<absl::StatusCode>(code), absl::StrCat(context, ": ", message));
  }
  if (model.empty()) {
    return absl::InternalError(
        absl::StrCat("training a tokenizer on ", corpus_path, ": SentencePiece returned no model"));
  }
  return WriteAtomically(model_path, model);
}

std::vector<int32_t> SentencePieceTokenizer::Encode(absl::string_view text) const {
  int32_t* ids = nullptr;
  size_t count = 0;
  // Encode only fails when no model is loaded, which the factories rule out.
  if (api_->encode(sp_, text.data(), text.size(), &ids, &count) != 0) return {};
  std::vector<int32_t> out(ids, ids + count);
  api_->free_buf(ids);
  return out;
}

std::string SentencePieceTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::vector<int32_t> kept;
  kept.reserve(ids.size());
  for (int32_t id : ids) {
    if (!IsSpecial(id)) kept.push_back(id);
  }
  size_t len = 0;
  char* text = api_->decode(sp_, kept.data(), kept.size(), &len);
  if (text == nullptr) return std::string();
  std::string out(text, len);
  api_->free_buf(text);
  return out;
}

bool SentencePieceTokenizer::IsSpecial(int32_t id) const {
  // A model may emit ids past the tokenizer's vocabulary (padded embeddings); SentencePiece
  // would reject the whole sequence, so they are dropped. <unk> would decode as " ⁇ ": it is
  // dropped too, with the control symbols (<s>, </s>) SentencePiece renders as nothing anyway.
  if (id < 0 || id >= api_->piece_size(sp_)) return true;
  return api_->is_special(sp_, id) != 0;
}

std::string SentencePieceTokenizer::IdToPiece(int32_t id) const {
  if (id < 0 || id >= api_->piece_size(sp_)) return std::string();
  size_t len = 0;
  char* p = api_->id_to_piece(sp_, id, &len);
  std::string out(p, len);
  api_->free_buf(p);
  return out;
}

float SentencePieceTokenizer::Score(int32_t id) const {
  if (id < 0 || id >= api_->piece_size(sp_)) return 0.0f;
  return api_->score(sp_, id);
}

int SentencePieceTokenizer::vocab_size() const { return api_->piece_size(sp_); }
int SentencePieceTokenizer::bos_id() const { return api_->bos_id(sp_); }
int SentencePieceTokenizer::eos_id() const { return api_->eos_id(sp_); }

std::string SentencePieceTokenizer::Serialized() const {
  size_t len = 0;
  char* p = api_->serialized(sp_, &len);
  std::string out(p, len);
  api_->free_buf(p);
  return out;
}

}  // namespace tandem

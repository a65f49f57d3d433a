// A scratch folder of the fuzzing process (under $TMPDIR), for the targets whose readers take
// paths: each input is written there, then read back through the real reader.
#ifndef TANDEM_TESTS_FUZZ_FUZZ_FILES_H_
#define TANDEM_TESTS_FUZZ_FUZZ_FILES_H_

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace tandem::fuzz {

inline const std::string& ScratchDir() {
  static const std::string* dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/tandem-fuzz-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    static std::string path = tmpl;
    // Removed when the fuzzing process exits (the files in it are the targets' inputs, each
    // rewritten by the next).
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    });
    return &path;
  }();
  return *dir;
}

inline void WriteBytes(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

}  // namespace tandem::fuzz

#endif  // TANDEM_TESTS_FUZZ_FUZZ_FILES_H_

// Files and folders for the tests: fresh temporary folders (a path, an owning object, or a
// fixture), whole-file reads and writes, folder listings. Failures to create or write are test
// failures (EXPECT), not statuses: a test that cannot set up fails. Torch-free.
#ifndef TANDEM_TESTS_TESTING_BASE_FILES_H_
#define TANDEM_TESTS_TESTING_BASE_FILES_H_

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace tandem::testing {

// A fresh folder <gtest's TempDir>/<prefix>-XXXXXX (mkdtemp), left on disk.
std::string MakeTempDir(const std::string& prefix);

// A fresh folder (MakeTempDir), removed with everything in it when this goes away.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string operator/(const std::string& child) const { return path_ + "/" + child; }

 private:
  std::string path_;
};

// A fixture whose every test has a folder of its own, dir_ = <gtest's TempDir>/tandem_<pid>_
// <suite>.<test>, removed before and after the test; created at SetUp unless the fixture is
// constructed with create_dir = false (for tests of code that creates it).
class TempDirTest : public ::testing::Test {
 protected:
  explicit TempDirTest(bool create_dir = true) : create_dir_(create_dir) {}
  void SetUp() override;
  void TearDown() override;

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  std::string dir_;

 private:
  const bool create_dir_;
};

// The file's bytes; empty when it cannot be read.
std::string ReadAll(const std::string& path);
// Replaces the file with `bytes`, creating its folder when needed.
void WriteAll(const std::string& path, const std::string& bytes);
// The names in `dir` (not "." and ".."), sorted; empty when it cannot be read.
std::vector<std::string> ListDir(const std::string& dir);

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_BASE_FILES_H_

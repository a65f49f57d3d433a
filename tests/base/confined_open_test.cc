// Confined opens: files beneath the root open; "..", absolute paths and symlinks that lead out
// fail at the open itself — also a symlink swapped in after an earlier check passed.
#include "base/confined_open.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "tests/testing/base/files.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

class ConfinedOpenTest : public testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    fs::create_directories(Path("root/sub"));
    testing::WriteAll(Path("root/sub/a.txt"), "inside");
    testing::WriteAll(Path("secret.txt"), "outside");
    root_ = Path("root");
  }
  std::string root_;
};

TEST_F(ConfinedOpenTest, ReadsFilesBeneathTheRoot) {
  absl::StatusOr<std::string> text = ReadFileBeneath(root_, root_ + "/sub/a.txt");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "inside");
  EXPECT_EQ(*ReadFileBeneath(root_, "sub/a.txt"), "inside");
  // A symlink that stays inside is fine.
  fs::create_symlink("sub/a.txt", Path("root/link.txt"));
  EXPECT_EQ(*ReadFileBeneath(root_, "link.txt"), "inside");
}

TEST_F(ConfinedOpenTest, RefusesEveryWayOut) {
  fs::create_symlink(Path("secret.txt"), Path("root/abs-link.txt"));
  fs::create_symlink("../secret.txt", Path("root/rel-link.txt"));
  fs::create_symlink(Path(""), Path("root/sub/up"));
  for (const std::string& path :
       {std::string("../secret.txt"), std::string("abs-link.txt"), std::string("rel-link.txt"),
        std::string("sub/up/secret.txt"), std::string("sub/../../secret.txt")}) {
    absl::StatusOr<std::string> text = ReadFileBeneath(root_, path);
    ASSERT_FALSE(text.ok()) << path << " read: " << *text;
    EXPECT_EQ(text.status().code(), absl::StatusCode::kPermissionDenied) << path << ": " << text.status();
    EXPECT_NE(text.status().message().find("leads outside"), std::string::npos);
  }
  EXPECT_EQ(ReadFileBeneath(root_, Path("secret.txt")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadFileBeneath(root_, "missing.txt").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadFileBeneath(root_, std::string("sub/a.txt\0x", 11)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ConfinedOpenTest, ASymlinkSwappedInAfterACheckIsCaughtAtOpen) {
  // The file was checked (it existed, inside); then it is replaced by a link to the outside.
  ASSERT_TRUE(ReadFileBeneath(root_, "sub/a.txt").ok());
  fs::remove(Path("root/sub/a.txt"));
  fs::create_symlink(Path("secret.txt"), Path("root/sub/a.txt"));
  EXPECT_EQ(ReadFileBeneath(root_, "sub/a.txt").status().code(),
            absl::StatusCode::kPermissionDenied);
  absl::StatusOr<int> fd = OpenBeneath(root_, "sub/a.txt", O_RDONLY);
  EXPECT_FALSE(fd.ok());
}

}  // namespace
}  // namespace tandem

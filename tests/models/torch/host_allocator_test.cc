#include "models/torch/host_allocator.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace tandem {
namespace {

TEST(HostAllocatorTest, ZeroLeavesTheDefaultsANegativeSizeIsRefused) {
  EXPECT_TRUE(KeepFreedHostMemory(0).ok());
  EXPECT_EQ(KeepFreedHostMemory(-1).code(), absl::StatusCode::kInvalidArgument);
}

#if defined(__GLIBC__)
// Kept, a 16 MiB block (a training step's logits are 8 MiB) comes from the heap, not a mapping of
// its own, and once freed it stays in the process for the next step instead of being unmapped.
TEST(HostAllocatorTest, AFreedBlockStaysInTheProcess) {
  ASSERT_TRUE(KeepFreedHostMemory(256).ok());
  constexpr size_t kBlock = size_t{16} << 20;
  const struct mallinfo2 before = mallinfo2();
  void* block = std::malloc(kBlock);
  ASSERT_NE(block, nullptr);
  std::memset(block, 1, kBlock);
  const struct mallinfo2 held = mallinfo2();
  std::free(block);
  const struct mallinfo2 after = mallinfo2();
  EXPECT_EQ(held.hblkhd, before.hblkhd);                // no mapping of its own
  EXPECT_GE(after.fordblks, before.fordblks + kBlock);  // kept, free, in the heap
  EXPECT_GE(after.arena, before.arena + kBlock);        // the heap did not shrink back
}
#endif

}  // namespace
}  // namespace tandem

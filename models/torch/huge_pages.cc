#include "models/torch/huge_pages.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace tandem::torch_util {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kAlign = 64;

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

// An anonymous mapping, unmapped when the last tensor in it goes.
struct Block {
  void* base = nullptr;
  size_t length = 0;
  ~Block() {
    if (base != nullptr) ::munmap(base, length);
  }
};

}  // namespace

std::vector<torch::Tensor> CopyIntoHugePages(const std::vector<torch::Tensor>& tensors) {
  // first[i]: the index of the first tensor that is tensors[i] (i itself unless it repeats).
  size_t total = 0;
  std::vector<size_t> offset(tensors.size()), first(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!tensors[i].device().is_cpu()) return tensors;
    first[i] = i;
    for (size_t j = 0; j < i && first[i] == i; ++j) {
      if (tensors[j].is_same(tensors[i])) first[i] = j;
    }
    if (first[i] != i) continue;
    offset[i] = total;
    total += RoundUp(tensors[i].nbytes(), kAlign);
  }
  if (total == 0) return tensors;
  // One huge page more than needed, so that the block can start on a huge-page boundary.
  auto block = std::make_shared<Block>();
  block->length = RoundUp(total, kHugePage) + kHugePage;
  block->base =
      ::mmap(nullptr, block->length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (block->base == MAP_FAILED) {
    block->base = nullptr;
    return tensors;
  }
  char* start =
      reinterpret_cast<char*>(RoundUp(reinterpret_cast<uintptr_t>(block->base), kHugePage));
  ::madvise(start, RoundUp(total, kHugePage), MADV_HUGEPAGE);  // advice: failure is harmless
  std::vector<torch::Tensor> out(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (first[i] != i) {
      out[i] = out[first[i]];
      continue;
    }
    const torch::Tensor src = tensors[i].contiguous();
    char* dst = start + offset[i];
    std::memcpy(dst, src.data_ptr(), src.nbytes());
    out[i] = torch::from_blob(
        dst, src.sizes(), [block](void*) {}, src.options());
  }
  return out;
}

}  // namespace tandem::torch_util

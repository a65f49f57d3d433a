// Weights in transparent huge pages. A decode step streams every weight once, and with 4 KiB pages
// the page walks of the TLB misses cost as much as the reads themselves (a 15M model's weights
// span 15 thousand pages): on the CPU, serving models copy their weights into one block that the
// kernel is asked to back with 2 MiB pages (madvise MADV_HUGEPAGE; it needs transparent huge
// pages in "always" or "madvise" mode, the common default). Internal to LibTorch translation
// units, like torch_util.h. Thread-compatible.
#ifndef TANDEM_MODELS_TORCH_HUGE_PAGES_H_
#define TANDEM_MODELS_TORCH_HUGE_PAGES_H_

#include <torch/torch.h>

#include <vector>

namespace tandem::torch_util {

// Copies of `tensors` (CPU, any dtype) in one huge-page block, each contiguous and 64-byte
// aligned, with their shapes and values; the block lives as long as any of them. A tensor that
// appears twice (tied weights) is copied once and stays shared. Returns `tensors` unchanged when
// one is not on the CPU, or when the block cannot be mapped.
std::vector<torch::Tensor> CopyIntoHugePages(const std::vector<torch::Tensor>& tensors);

}  // namespace tandem::torch_util

#endif  // TANDEM_MODELS_TORCH_HUGE_PAGES_H_

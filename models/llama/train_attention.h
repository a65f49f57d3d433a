// Causal grouped-query attention over whole sequences, forward and backward, fused for the CPU:
// the training forward's attention (llama_train_net.cc) without materialising the [T, T] score
// tensors of every head in ATen, and without the half of them the causal mask discards. The
// backward recomputes the scores from the saved log-sum-exp (as FlashAttention does).
//
// Torch-free: plain float32 arrays, row-major; the caller (llama_train_net.cc) splits the tasks
// over threads. A task is one (sequence b, kv head j) = (task / KV, task % KV) and owns every
// output row it writes, so tasks run in any order on any number of threads, and each result
// depends only on the width and the task's inputs: a sequence computes the same bits alone or
// in a batch.
#ifndef TANDEM_MODELS_LLAMA_TRAIN_ATTENTION_H_
#define TANDEM_MODELS_LLAMA_TRAIN_ATTENTION_H_

#include <cstdint>

#include "models/llama/cpu_kernels.h"

namespace tandem::cpu_kernels {

struct CausalAttention {
  int64_t batch = 0, seq = 0;          // B, T
  int64_t heads = 0, kv_heads = 0;     // H, KV; query head h attends with kv head h / (H / KV)
  int64_t head_dim = 0;                // hd
  float scale = 1.0f;                  // applied to q . k

  int64_t tasks() const { return batch * kv_heads; }
};

// out[b, i, h, :] = sum over t <= i of softmax_t(scale * q[b, i, h] . k[b, t, h/G]) v[b, t, h/G],
// lse[b, h, i] = the log of that softmax's denominator, max included.
// q: [B, T, H, hd]; k, v: [B, T, KV, hd]; out: [B, T, H, hd]; lse: [B, H, T].
void CausalAttentionForward(Width width, const CausalAttention& a, const float* q, const float* k,
                            const float* v, float* out, float* lse, int64_t begin, int64_t end);

// The gradients of the forward's out for its upstream gradient dout [B, T, H, hd], from the
// forward's inputs, out and lse: dq [B, T, H, hd], dk and dv [B, T, KV, hd] (overwritten).
void CausalAttentionBackward(Width width, const CausalAttention& a, const float* q, const float* k,
                             const float* v, const float* out, const float* lse, const float* dout,
                             float* dq, float* dk, float* dv, int64_t begin, int64_t end);

}  // namespace tandem::cpu_kernels

#endif  // TANDEM_MODELS_LLAMA_TRAIN_ATTENTION_H_

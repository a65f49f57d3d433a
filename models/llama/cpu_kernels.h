// The CPU kernels of a Llama decode step: plain loops over float32 rows in place (no tensors, no
// allocation), vectorized with GCC vector extensions at the widest width the CPU has, chosen at
// run time: 16 lanes (AVX-512F), 8 (AVX2 with FMA) or 4 (SSE2 / NEON, every 64-bit CPU). The
// build targets baseline x86-64, so each width is compiled under its own target attribute.
// Torch-free; the caller (llama.cc) splits the rows over threads. Every result depends only on
// the width and its inputs — not on how rows are split or how many rows a step has — so a row
// computes the same bits alone or in a batch, on any number of threads.
#ifndef TANDEM_MODELS_LLAMA_CPU_KERNELS_H_
#define TANDEM_MODELS_LLAMA_CPU_KERNELS_H_

#include <cstdint>

namespace tandem::cpu_kernels {

enum class Width { k4 = 4, k8 = 8, k16 = 16 };

// The widest width this CPU runs.
Width WidestWidth();

// y[m, r] = sum_c w[r, c] * x[m, c] (+ residual[m, r] when residual is not null) for the rows
// [begin, end) of the row-major matrix w of `cols` columns and the b inputs x[m] (rows of
// x_stride floats); y and residual have rows of y_stride floats, and y may be residual (an
// in-place residual add). Each weight row is read once for all b inputs, and each y[m, r] is
// the same sum, bit for bit, whatever b and m are: a batch computes what its rows would alone.
void MatMat(Width width, const float* w, int64_t cols, const float* x, int64_t x_stride, int64_t b,
            const float* residual, float* y, int64_t y_stride, int64_t begin, int64_t end);

// 1 / sqrt(mean(x^2) + eps) over x[0, n).
float InvRms(Width width, const float* x, int64_t n, float eps);

// One decode step's attention over the KV cache, in place. Rows of the step are sequences; each
// writes its new k, v at its own position and attends over its own prefix only.
struct AttentionStep {
  const float* qkv;          // [b, KV, G+2, hd]: queries of group j, then k_j, v_j (after RoPE)
  float* kv;                 // cache [2, S, KV, T, hd]
  float* scores;             // [b*KV, G, L]: scores, then probabilities
  float* out;                // [b, KV, G, hd]
  const int64_t* rows;       // [b] physical cache rows
  const int64_t* positions;  // [b] position of each row's new token
  int64_t slots, kv_heads, g, hd, seq_len;
  int64_t length;  // L: the step's longest row
  float scale;

  // The [T, hd] K (which = 0) or V (which = 1) of step row i's kv head j.
  float* Cache(int64_t which, int64_t i, int64_t j) const {
    return kv + ((which * slots + rows[i]) * kv_heads + j) * seq_len * hd;
  }
};

// Tasks [begin, end) of (row i, kv head j) = (task / KV, task % KV): store the new k, v at the
// row's position, then scores[task, h, t] = scale * q_h . K[t] for t <= position, -inf after.
void AttentionScores(Width width, const AttentionStep& s, int64_t begin, int64_t end);
// scores[task] = softmax over each head's [0, position] (in place; 0 after).
void AttentionSoftmax(const AttentionStep& s, int64_t begin, int64_t end);
// out[task, h, :] = sum over t <= position of probs[task, h, t] * V[t, :].
void AttentionValues(Width width, const AttentionStep& s, int64_t begin, int64_t end);

}  // namespace tandem::cpu_kernels

#endif  // TANDEM_MODELS_LLAMA_CPU_KERNELS_H_

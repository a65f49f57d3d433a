// The LibTorch Llama decoder behind TextModel, in llama2.c's layout: the configuration
// (LlamaConfig), the weights (Weights: plain tensors, fused and folded once at load time) and the
// run state (RunState: the preallocated KV cache and the slot bookkeeping) are kept apart, and one
// function runs the layers for both a decode batch and a whole sequence.
//
// Architecture (Meta's / llama2.c's model.py): token embedding; per layer
//   x += wo(attention(rope(wq h), rope(wk h), wv h)),  h = rmsnorm(x) * attention_norm
//   x += w2(silu(w1 h) * w3 h),                        h = rmsnorm(x) * ffn_norm
// then rmsnorm(x) * norm and the output projection. RoPE rotates the interleaved pairs
// (2i, 2i+1) of every head by pos * theta^(-2i/head_dim); attention is causal, grouped-query
// (query head h reads kv head h / (n_heads / n_kv_heads)) and scaled by 1/sqrt(head_dim).
//
// Speed. Decode on the CPU leaves ATen altogether (DecodeRowsCpu, below). Elsewhere — prefill,
// Forward, and decode on other devices — the models this serves are small enough that eager-mode
// op dispatch, not arithmetic, bounds much of a step, so a layer is as few ATen ops as it can
// be: 18 that compute (4 per RMSNorm, qkv, RoPE, 3 for attention, wo, w13, silu, mul, w2; see
// RunLayers) plus a dozen views. To get there (the CPU decode loops share the first three):
//   * wq|wk|wv are fused into one matrix, ordered per kv head j as [the G query heads of group j,
//     k_j, v_j], so that one matmul gives qkv [N, KV, G+2, hd] in which the queries of a group
//     are a [N*KV, G, hd] view (grouped-query attention without repeating K/V) and RoPE rotates
//     q and k together with one complex multiply;
//   * w1|w3 are fused into one [2*hidden, dim] matrix;
//   * the RMSNorm gains of attention_norm and ffn_norm are folded into the columns of the matrix
//     that follows them (W (x*g) == (W diag(g)) x), and mean(x^2) + eps is one addmv;
//   * residual adds are fused into the projections (addmm / addmv);
//   * the rotary table is built once; the step's indices (and mask) once per step;
//   * on the CPU a projection of fewer than kKernelRows rows runs in the cpu_kernels loops, not
//     in OpenBLAS (whose sgemm packs its whole right-hand side, and whose threaded calls share
//     one buffer slot with training's: see kKernelRows);
//   * Prefill computes the output projection for the last position only.
//
// Decode on the CPU, below kLoopRows sequences a step, is a handful of loops over the weights in
// place (cpu_kernels.h), with no op dispatch, no allocation and no temporary tensors (larger
// steps multiply in sgemm and attend in the same loops): each weight row is read once per step,
// one sequential stream at a time, and multiplied with every sequence's vector at the widest
// width the CPU has; the step runs in one OpenMP region per token, each thread taking its share of
// every matrix's rows and of the (sequence, kv head) attention tasks, meeting at spin barriers.
// A single stream is bound by reading the weights once per token: these loops read them at the
// speed the hardware prefetchers allow, where OpenBLAS's sgemv fell well short of it on the
// 32000-row output projection of a 15M model. Every sequence's logits are the same bits whatever
// else is in a step of fewer than kLoopRows rows and on any thread count (steps of more differ
// from them within rounding).
//
// The KV cache is one tensor per layer, [2, max_slots, KV, seq_len, hd] (K then V). Active
// sequences occupy the physical rows [0, n_active) and a map turns logical slots into rows;
// ReleaseSlot moves the last active row into the hole. Rows hold different lengths: each writes
// its new K/V at its own position and attends over its own prefix only. On the CPU, decode
// attention is three small loops over the cache rows in place (scores, softmax, values; one BLAS
// call per (row, kv head) would cost more than the arithmetic); elsewhere it is ATen's batched
// matmul, over views of rows [0, B) when the step covers every active slot and a gather of the
// rows otherwise, with an additive mask hiding each row's positions past its own.
// The decode weights live in one huge-page block on the CPU (huge_pages.h): the TLB misses of
// 4 KiB pages cost a single stream as much as the reads.
#include "models/llama/llama.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <omp.h>
#include <torch/torch.h>

#include "models/llama/cpu_kernels.h"
#include "models/torch/huge_pages.h"
#include "models/torch/torch_util.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"

namespace tandem {
namespace {

using torch_util::FromFloatTensor;
using torch_util::RunTorch;
using torch_util::ToFloatTensor;

// CPU projections of fewer rows than this (a short prompt's prefill, the last position's
// logits, a decode step on the ATen path) multiply in the cpu_kernels loops rather than in
// OpenBLAS. Besides skipping sgemm's packing, this keeps serving off OpenBLAS's one buffer slot
// for threaded calls (MAX_PARALLEL_NUMBER 1 in Debian's build): a threaded call waits, spinning,
// while another thread's call holds it — and a training chunk's call, on SCHED_IDLE threads the
// spinning server thread starves, held it for 100–1000 ms (see README: serving beside training).
constexpr int64_t kKernelRows = 32;
// CPU decode steps of fewer rows than this run in the cpu_kernels loops (DecodeRowsCpu); larger
// ones multiply in OpenBLAS's sgemm, whose register-blocked kernels win there despite packing
// the weights (the crossover measured on a 7M model, 1 thread: about 16 rows).
constexpr int64_t kLoopRows = 16;
// Prefill runs at most this many tokens through one forward.
constexpr size_t kPrefillChunk = 512;

// ---------------------------------------------------------------------------------------------
// Errors: no torch exception leaves this file.


// ---------------------------------------------------------------------------------------------
// Tensor names and shapes.

std::string LayerName(int layer, const char* suffix) {
  return absl::StrCat("layers.", layer, ".", suffix);
}

using NamedShape = LlamaTensorShape;

}  // namespace

// Every tensor the config needs, in a fixed order (RandomLlamaWeights draws them in this order).
std::vector<LlamaTensorShape> LlamaTensorShapes(const LlamaConfig& c) {
  const int64_t dim = c.dim, hd = c.head_dim(), hidden = c.hidden_dim;
  const int64_t q_dim = int64_t{c.n_heads} * hd, kv_dim = int64_t{c.n_kv_heads} * hd;
  std::vector<NamedShape> out;
  out.push_back({"tok_embeddings.weight", {c.vocab_size, dim}});
  for (int i = 0; i < c.n_layers; ++i) {
    out.push_back({LayerName(i, "attention_norm.weight"), {dim}});
    out.push_back({LayerName(i, "attention.wq.weight"), {q_dim, dim}});
    out.push_back({LayerName(i, "attention.wk.weight"), {kv_dim, dim}});
    out.push_back({LayerName(i, "attention.wv.weight"), {kv_dim, dim}});
    out.push_back({LayerName(i, "attention.wo.weight"), {dim, q_dim}});
    out.push_back({LayerName(i, "ffn_norm.weight"), {dim}});
    out.push_back({LayerName(i, "feed_forward.w1.weight"), {hidden, dim}});
    out.push_back({LayerName(i, "feed_forward.w2.weight"), {dim, hidden}});
    out.push_back({LayerName(i, "feed_forward.w3.weight"), {hidden, dim}});
  }
  out.push_back({"norm.weight", {dim}});
  if (!c.tie_embeddings) out.push_back({"output.weight", {c.vocab_size, dim}});
  return out;
}

namespace {

std::vector<NamedShape> ExpectedTensors(const LlamaConfig& c) { return LlamaTensorShapes(c); }

// The config after LlamaConfig::Normalize, whose checks (sizes, divisibility, an even head_dim
// for RoPE) are all this implementation needs.
absl::StatusOr<LlamaConfig> CheckedConfig(const LlamaConfig& config) {
  LlamaConfig c = config;
  if (absl::Status s = c.Normalize(); !s.ok()) return s;
  return c;
}

// ---------------------------------------------------------------------------------------------
// Weights and run state.

struct LayerWeights {
  // [KV*(G+2)*hd, dim]: per kv head j, its G query heads, k_j, v_j; attention_norm folded in
  torch::Tensor wqkv;
  torch::Tensor wo;   // [dim, H*hd]
  torch::Tensor w13;  // [2*hidden, dim]: w1 rows then w3 rows; ffn_norm folded
  torch::Tensor w2;   // [dim, hidden]
};

struct Weights {
  torch::Tensor tok_embeddings;  // [vocab, dim]
  std::vector<LayerWeights> layers;
  torch::Tensor norm;     // [dim] final RMSNorm gain
  torch::Tensor output;   // [vocab, dim]; the tok_embeddings tensor itself when tied
  torch::Tensor rope;     // [seq_len, hd/2] complex64: cos + i sin of pos * theta^(-2i/hd)
  torch::Tensor eps;      // [1] norm_eps, for RmsNorm
  torch::Tensor inv_dim;  // [dim] 1/dim, for RmsNorm
};

struct RunState {
  std::vector<torch::Tensor> kv;  // per layer [2, max_slots, KV, seq_len, hd]: K, V by physical row
  std::vector<int> slot_row;      // [max_slots] logical slot -> physical row, -1 when free
  std::vector<int> row_slot;      // [max_slots] physical row -> logical slot (rows < n_active)
  std::vector<int> row_length;    // [max_slots] positions held by each physical row
  int n_active = 0;               // rows [0, n_active) are in use
};

// x: [N, dim] -> x * rsqrt(mean(x^2) + eps): [N, dim]. The gain is applied by the caller (or
// folded into the next matrix). mean(x^2) + eps is one gemv, eps + x^2 . (1/dim): ATen's
// mean is several times slower than addmv on rows this short. 4 ops.
torch::Tensor RmsNorm(const torch::Tensor& x, const Weights& w) {
  return x * at::addmv(w.eps, x.square(), w.inv_dim).rsqrt_().unsqueeze(1);
}

// x: [N, in], w: [out, in] -> x w^T (+ residual [N, out]): [N, out].
torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& w,
                     const torch::Tensor* residual = nullptr) {
  const int64_t n = x.size(0), in = x.size(1), out = w.size(0);
  if (x.is_cpu() && n < kKernelRows && x.scalar_type() == at::kFloat && w.is_contiguous()) {
    const torch::Tensor xc = x.contiguous();                                 // [N, in]
    const torch::Tensor rc = residual ? residual->contiguous() : torch::Tensor();  // [N, out]
    torch::Tensor y = at::empty({n, out}, x.options());                     // [N, out]
    const cpu_kernels::Width width = cpu_kernels::WidestWidth();
    const float* wp = w.data_ptr<float>();
    const float* xp = xc.data_ptr<float>();
    const float* rp = residual ? rc.data_ptr<float>() : nullptr;
    float* yp = y.data_ptr<float>();
    // Output rows in parallel, about 32K multiply-adds a task.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, in * n));
    at::parallel_for(0, out, grain, [&](int64_t begin, int64_t end) {
      cpu_kernels::MatMat(width, wp, in, xp, in, n, rp, yp, out, begin, end);
    });
    return y;
  }
  return residual ? at::addmm(*residual, x, w.t()) : at::mm(x, w.t());
}

// ---------------------------------------------------------------------------------------------
// Decode on the CPU (cpu_kernels.h; see the top of this file). ATen's bmm makes one BLAS call per
// (row, kv head) pair, and that fixed cost exceeds the G x hd x length arithmetic of a decode
// step many times over; the attention loops walk the cache rows in place instead (no mask, no
// gather), streaming each row's K and V prefix once.

using cpu_kernels::Width;

// How a decode step runs: ATen throughout (any device), or the CPU loops at a vector width.
// TANDEM_DECODE_ATTENTION=aten|vec4|vec8 overrides the choice on the CPU, so that tests and
// comparisons can run every path on any machine (vec8 falls back to vec4 without AVX2).
struct DecodePath {
  bool aten = true;
  Width width = Width::k4;
};

DecodePath ChooseDecodePath(const torch::Device& device) {
  if (!device.is_cpu()) return DecodePath{};
  const Width widest = cpu_kernels::WidestWidth();
  const char* forced = std::getenv("TANDEM_DECODE_ATTENTION");
  if (forced != nullptr && std::strcmp(forced, "aten") == 0) return DecodePath{};
  if (forced != nullptr && std::strcmp(forced, "vec4") == 0) return DecodePath{false, Width::k4};
  if (forced != nullptr && std::strcmp(forced, "vec8") == 0) {
    return DecodePath{false, widest == Width::k4 ? Width::k4 : Width::k8};
  }
  return DecodePath{false, widest};
}

// Tasks per parallel chunk: about 32K multiply-adds each, so that short steps stay serial.
int64_t AttentionGrain(const cpu_kernels::AttentionStep& s) {
  return std::max<int64_t>(1, (int64_t{1} << 15) / (s.g * s.hd * s.length));
}

// Stores every row's new k, v and attends over the cache: scores, softmax, values.
// qkv: [b, KV, G+2, hd] contiguous (after RoPE); kv: [2, S, KV, T, hd]; rows, positions: [b]
// (host); scores: b*KV*G*length floats of scratch; out: [b, KV, G, hd].
void AttendCpu(const float* qkv, const torch::Tensor& kv, const int64_t* rows,
               const int64_t* positions, int64_t b, int64_t g, int64_t length, double scale,
               Width width, float* scores, float* out) {
  RECORD_FUNCTION("tandem::AttendCpu", std::vector<c10::IValue>());
  cpu_kernels::AttentionStep s{};
  s.qkv = qkv;
  s.kv = kv.data_ptr<float>();
  s.scores = scores;
  s.out = out;
  s.rows = rows;
  s.positions = positions;
  s.slots = kv.size(1);
  s.kv_heads = kv.size(2);
  s.g = g;
  s.hd = kv.size(4);
  s.seq_len = kv.size(3);
  s.length = length;
  s.scale = static_cast<float>(scale);
  const int64_t tasks = b * s.kv_heads, grain = AttentionGrain(s);
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    cpu_kernels::AttentionScores(width, s, begin, end);
    cpu_kernels::AttentionSoftmax(s, begin, end);
    cpu_kernels::AttentionValues(width, s, begin, end);
  });
}

// A barrier for the threads of one parallel region that spins (briefly, then yields) instead of
// sleeping: DecodeRowsCpu synchronises its threads 8 times per layer, microseconds apart, and
// whenever OpenMP waits passively (OMP_WAIT_POLICY=PASSIVE, or libgomp's default while its
// threads outnumber the cores, as when tandemd serves beside training) every parallel region (and
// OpenMP barrier) is a futex sleep and wake-up. One region per token, with these barriers inside
// it, keeps that cost to one wake-up per token.
class SpinBarrier {
 public:
  // Every thread of the region calls this with the team's size before its first Wait.
  void SetThreads(int n) { threads_.store(n, std::memory_order_relaxed); }
  void Wait() {
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 ==
        threads_.load(std::memory_order_relaxed)) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins < 4096) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      } else {
        std::this_thread::yield();  // a descheduled partner: give it the core
      }
    }
  }

 private:
  std::atomic<int> threads_{1};
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
};

// The share [begin, end) of n items that thread t of `threads` takes.
void Share(int64_t n, int t, int threads, int64_t* begin, int64_t* end) {
  *begin = n * t / threads;
  *end = n * (t + 1) / threads;
}

class LlamaModel final : public TextModel {
 public:
  LlamaModel(LlamaConfig config, torch::Device device, int max_slots, int64_t parameter_count)
      : config_(std::move(config)),
        device_(device),
        device_string_(device.str()),
        max_slots_(max_slots),
        parameter_count_(parameter_count),
        kv_heads_(config_.n_kv_heads),
        group_(config_.n_heads / config_.n_kv_heads),
        head_dim_(config_.head_dim()),
        scale_(1.0 / std::sqrt(static_cast<double>(config_.head_dim()))) {}

  // Fuses and moves the weights (float32 CPU tensors by name) and allocates the run state.
  void Load(const std::map<std::string, torch::Tensor>& w);
  // On the CPU, moves the matrices and embeddings into one huge-page block (huge_pages.h).
  void PlaceInHugePages();

  const LlamaConfig& config() const override { return config_; }
  const std::string& device() const override { return device_string_; }
  int max_slots() const override { return max_slots_; }
  int free_slots() const override { return max_slots_ - state_.n_active; }
  int64_t parameter_count() const override { return parameter_count_; }

  absl::StatusOr<int> AcquireSlot() override;
  void ReleaseSlot(int slot) override;
  int SlotLength(int slot) const override;
  absl::Status Prefill(int slot, absl::Span<const int32_t> tokens, float* logits) override;
  absl::Status Decode(absl::Span<const int> slots, absl::Span<const int32_t> tokens,
                      float* logits) override;
  absl::Status Forward(absl::Span<const int32_t> tokens, std::vector<float>* logits) override;

 private:
  // Runs every layer over x [N, dim] in place of the residual stream and returns it. qkv after
  // RoPE is handed to attend(layer, qkv [N, KV, G+2, hd]) which returns [N, H*hd].
  template <typename Attend>
  torch::Tensor RunLayers(torch::Tensor x, const torch::Tensor& rope, Attend&& attend) const;
  // Final RMSNorm and output projection: [N, dim] -> [N, vocab].
  torch::Tensor Logits(const torch::Tensor& x) const;
  // Causal forward over n tokens at positions [start, start+n) of physical row `row`, storing
  // their K/V there (row < 0: no cache, start must be 0). Returns the final hidden states [n, dim].
  torch::Tensor SequenceForward(absl::Span<const int32_t> tokens, int row, int start);
  torch::Tensor TokensTensor(absl::Span<const int32_t> tokens) const;
  absl::Status CheckTokens(absl::Span<const int32_t> tokens) const;
  absl::Status CheckSlot(int slot) const;
  // The additive mask of a decode step on the ATen path: row i's kv heads see positions up to
  // positions[i] of [0, length): [b*KV, 1, length] on the device.
  torch::Tensor DecodeMask(const int64_t* positions, int64_t b, int64_t length) const;
  // Decode's slots: acquired, distinct, each with room for one more position. The highest
  // physical row among them and the longest length after the step.
  absl::Status CheckDecodeSlots(absl::Span<const int> slots, int* max_row, int* max_length) const;
  // Decode on the CPU without ATen: the whole step in the cpu_kernels loops, on every intra-op
  // thread in one parallel region (each thread takes its share of every matrix's rows, of the
  // step's rows and of its (row, kv head) attention tasks), logits into `logits`.
  void DecodeRowsCpu(absl::Span<const int> slots, absl::Span<const int32_t> tokens,
                     Width width, float* logits);
  // Thread t's part of DecodeRowsCpu over the b rows staged in rows_, positions_ and x_;
  // `barrier` is null when it runs alone.
  void DecodeRowsShare(int t, int threads, SpinBarrier* barrier, int64_t b, Width width,
                       float* logits);

  const LlamaConfig config_;
  const torch::Device device_;
  const std::string device_string_;
  const int max_slots_;
  const int64_t parameter_count_;
  const int64_t kv_heads_, group_, head_dim_;
  const double scale_;
  Weights weights_;
  RunState state_;
  // DecodeRowsCpu's step, one row per sequence of the step (at most max_slots): physical rows,
  // positions; activations x [dim], h (normalized x, or the SwiGLU activation)
  // [max(dim, hidden)], qkv [KV*(G+2)*hd], attention out [H*hd], h13 [2*hidden]; and the
  // attention scores [max_slots*KV*G*seq_len].
  std::vector<int64_t> rows_, positions_;
  std::vector<float> x_, h_, qkv_, attn_, h13_, scores_;
};

void LlamaModel::Load(const std::map<std::string, torch::Tensor>& w) {
  const int64_t kv = kv_heads_, g = group_, hd = head_dim_, dim = config_.dim;
  auto to_device = [&](const torch::Tensor& t) { return t.to(device_).contiguous(); };
  weights_.tok_embeddings = to_device(w.at("tok_embeddings.weight"));  // [vocab, dim]
  weights_.norm = to_device(w.at("norm.weight"));                      // [dim]
  weights_.output = config_.tie_embeddings ? weights_.tok_embeddings
                                           : to_device(w.at("output.weight"));  // [vocab, dim]
  for (int i = 0; i < config_.n_layers; ++i) {
    auto get = [&](const char* suffix) { return w.at(LayerName(i, suffix)); };
    LayerWeights layer;
    const torch::Tensor attention_norm = get("attention_norm.weight");  // [dim]
    const torch::Tensor ffn_norm = get("ffn_norm.weight");              // [dim]
    // [KV, G*hd, dim] | [KV, hd, dim] | [KV, hd, dim] -> [KV, (G+2)*hd, dim] -> [KV*(G+2)*hd, dim]
    const torch::Tensor wqkv = torch::cat({get("attention.wq.weight").view({kv, g * hd, dim}),
                                           get("attention.wk.weight").view({kv, hd, dim}),
                                           get("attention.wv.weight").view({kv, hd, dim})},
                                          1)
                                   .view({kv * (g + 2) * hd, dim});
    layer.wqkv = to_device(wqkv * attention_norm);     // [KV*(G+2)*hd, dim]
    layer.wo = to_device(get("attention.wo.weight"));  // [dim, H*hd]
    const torch::Tensor w13 =
        torch::cat({get("feed_forward.w1.weight"), get("feed_forward.w3.weight")}, 0);
    layer.w13 = to_device(w13 * ffn_norm);                // [2*hidden, dim]
    layer.w2 = to_device(get("feed_forward.w2.weight"));  // [dim, hidden]
    weights_.layers.push_back(std::move(layer));
  }
  PlaceInHugePages();
  // Rotary table, computed in double: angle(pos, i) = pos * theta^(-2i/hd).
  const torch::Tensor inv_freq =
      torch::pow(config_.rope_theta,
                 -torch::arange(0, hd, 2, torch::kFloat64) / static_cast<double>(hd));  // [hd/2]
  const torch::Tensor angle =
      torch::outer(torch::arange(config_.seq_len, torch::kFloat64), inv_freq);  // [seq_len, hd/2]
  weights_.rope = torch::polar(torch::ones_like(angle), angle).to(torch::kComplexFloat).to(device_);
  weights_.eps = torch::full({1}, config_.norm_eps, torch::TensorOptions().device(device_));
  weights_.inv_dim = torch::full({dim}, 1.0 / dim, torch::TensorOptions().device(device_));

  // Run state: the whole cache up front, zero so that masked-out positions are finite.
  for (int i = 0; i < config_.n_layers; ++i) {
    state_.kv.push_back(torch::zeros({2, max_slots_, kv, config_.seq_len, hd},
                                     torch::TensorOptions().device(device_)));
  }
  state_.slot_row.assign(max_slots_, -1);
  state_.row_slot.assign(max_slots_, -1);
  state_.row_length.assign(max_slots_, 0);
  const int64_t hidden = config_.hidden_dim, h_dim = kv * g * hd, s = max_slots_;
  rows_.assign(s, 0);
  positions_.assign(s, 0);
  x_.assign(s * dim, 0.0f);
  h_.assign(s * std::max(dim, hidden), 0.0f);
  qkv_.assign(s * kv * (g + 2) * hd, 0.0f);
  attn_.assign(s * h_dim, 0.0f);
  h13_.assign(s * 2 * hidden, 0.0f);
  scores_.assign(s * kv * g * config_.seq_len, 0.0f);
}

void LlamaModel::PlaceInHugePages() {
  std::vector<torch::Tensor*> slots = {&weights_.tok_embeddings, &weights_.output, &weights_.norm};
  for (LayerWeights& l : weights_.layers) {
    for (torch::Tensor* t : {&l.wqkv, &l.wo, &l.w13, &l.w2}) slots.push_back(t);
  }
  std::vector<torch::Tensor> tensors;
  for (torch::Tensor* t : slots) tensors.push_back(*t);
  const std::vector<torch::Tensor> placed = torch_util::CopyIntoHugePages(tensors);
  for (size_t i = 0; i < slots.size(); ++i) *slots[i] = placed[i];
}

template <typename Attend>
torch::Tensor LlamaModel::RunLayers(torch::Tensor x, const torch::Tensor& rope,
                                    Attend&& attend) const {
  const int64_t n = x.size(0), kv = kv_heads_, g = group_, hd = head_dim_;
  const int64_t hidden = config_.hidden_dim;
  for (size_t l = 0; l < weights_.layers.size(); ++l) {
    const LayerWeights& w = weights_.layers[l];
    // Attention: 4 (norm) + 1 (qkv) + 1 (rope) + attend + 1 (wo + residual) ops.
    torch::Tensor qkv =
        Linear(RmsNorm(x, weights_), w.wqkv).view({n, kv, g + 2, hd});  // [N, KV, G+2, hd]
    // q and k heads as complex pairs: [N, KV, G+1, hd/2] *= rope [N, 1, 1, hd/2].
    at::view_as_complex(qkv.narrow(2, 0, g + 1).view({n, kv, g + 1, hd / 2, 2})).mul_(rope);
    const torch::Tensor attn = attend(l, qkv);  // [N, H*hd]
    x = Linear(attn, w.wo, &x);                 // [N, dim]
    // SwiGLU: 4 (norm) + 1 (w13) + 2 (silu, mul) + 1 (w2 + residual) ops.
    const torch::Tensor h13 = Linear(RmsNorm(x, weights_), w.w13);  // [N, 2*hidden]
    const torch::Tensor act =
        at::silu(h13.narrow(1, 0, hidden)).mul_(h13.narrow(1, hidden, hidden));  // [N, hidden]
    x = Linear(act, w.w2, &x);                                                   // [N, dim]
  }
  return x;
}

torch::Tensor LlamaModel::Logits(const torch::Tensor& x) const {
  return Linear(RmsNorm(x, weights_) * weights_.norm, weights_.output);  // [N, vocab]
}

torch::Tensor LlamaModel::TokensTensor(absl::Span<const int32_t> tokens) const {
  torch::Tensor t = torch::empty({static_cast<int64_t>(tokens.size())}, torch::kInt64);  // [n]
  int64_t* p = t.data_ptr<int64_t>();
  for (size_t i = 0; i < tokens.size(); ++i) p[i] = tokens[i];
  return t.to(device_);
}

torch::Tensor LlamaModel::SequenceForward(absl::Span<const int32_t> tokens, int row, int start) {
  const int64_t n = tokens.size(), kv = kv_heads_, g = group_, hd = head_dim_;
  const int64_t length = start + n;  // positions attended: [0, length)
  // Causal mask over [0, length) for query rows ordered (position i, head g): [1, n*G, length].
  torch::Tensor mask = torch::zeros({1, n * g, length});
  {
    float* m = mask.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t r = i * g; r < (i + 1) * g; ++r) {
        std::fill(m + r * length + start + i + 1, m + (r + 1) * length,
                  -std::numeric_limits<float>::infinity());
      }
    }
  }
  mask = mask.to(device_);
  const torch::Tensor rope = weights_.rope.narrow(0, start, n).view({n, 1, 1, hd / 2});
  torch::Tensor x = at::embedding(weights_.tok_embeddings, TokensTensor(tokens));  // [n, dim]
  return RunLayers(x, rope, [&](size_t l, const torch::Tensor& qkv) {
    torch::Tensor k, v;  // [KV, length, hd]
    if (row >= 0) {
      const torch::Tensor cache = state_.kv[l].select(1, row);  // [2, KV, seq_len, hd]
      // Store the new k|v: [n, KV, 2, hd] -> [2, KV, n, hd].
      cache.narrow(2, start, n).copy_(qkv.narrow(2, g, 2).permute({2, 1, 0, 3}));
      k = cache[0].narrow(1, 0, length);
      v = cache[1].narrow(1, 0, length);
    } else {
      k = qkv.select(2, g).transpose(0, 1);      // [KV, n, hd]
      v = qkv.select(2, g + 1).transpose(0, 1);  // [KV, n, hd]
    }
    // [n, KV, G, hd] -> [KV, n*G, hd]
    const torch::Tensor q = qkv.narrow(2, 0, g).permute({1, 0, 2, 3}).reshape({kv, n * g, hd});
    const torch::Tensor scores =
        at::baddbmm(mask, q, k.transpose(1, 2), 1.0, scale_);       // [KV, n*G, length]
    const torch::Tensor out = at::bmm(at::softmax(scores, -1), v);  // [KV, n*G, hd]
    return out.view({kv, n, g, hd}).permute({1, 0, 2, 3}).reshape({n, kv * g * hd});  // [n, H*hd]
  });
}

absl::Status LlamaModel::CheckTokens(absl::Span<const int32_t> tokens) const {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token ", tokens[i], " at index ", i,
                                                     " is outside the vocabulary [0, ",
                                                     config_.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::CheckSlot(int slot) const {
  if (slot < 0 || slot >= max_slots_ || state_.slot_row[slot] < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("slot ", slot, " is not an acquired slot (max_slots ", max_slots_, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> LlamaModel::AcquireSlot() {
  if (state_.n_active >= max_slots_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("all ", max_slots_, " KV-cache slots are in use"));
  }
  int slot = 0;
  while (state_.slot_row[slot] >= 0) ++slot;
  const int row = state_.n_active++;
  state_.slot_row[slot] = row;
  state_.row_slot[row] = slot;
  state_.row_length[row] = 0;
  return slot;
}

void LlamaModel::ReleaseSlot(int slot) {
  if (!CheckSlot(slot).ok()) return;
  const int row = state_.slot_row[slot];
  const int last = state_.n_active - 1;
  if (row != last) {
    // Keep rows [0, n_active) dense: move the last row's K/V prefix into the hole.
    const int length = state_.row_length[last];
    absl::Status moved = RunTorch("ReleaseSlot", [&]() -> absl::Status {
      for (const torch::Tensor& kv : state_.kv) {  // [2, S, KV, seq_len, hd]
        kv.select(1, row).narrow(2, 0, length).copy_(kv.select(1, last).narrow(2, 0, length));
      }
      return absl::OkStatus();
    });
    if (!moved.ok()) {
      // The cache rows would be inconsistent with the map: nothing sensible is left to serve.
      std::fprintf(stderr, "tandem: %s\n", moved.ToString().c_str());
      std::abort();
    }
    state_.row_slot[row] = state_.row_slot[last];
    state_.slot_row[state_.row_slot[row]] = row;
    state_.row_length[row] = length;
  }
  state_.slot_row[slot] = -1;
  state_.row_slot[last] = -1;
  state_.row_length[last] = 0;
  --state_.n_active;
}

int LlamaModel::SlotLength(int slot) const {
  if (!CheckSlot(slot).ok()) return 0;
  return state_.row_length[state_.slot_row[slot]];
}

absl::Status LlamaModel::Prefill(int slot, absl::Span<const int32_t> tokens, float* logits) {
  if (absl::Status s = CheckSlot(slot); !s.ok()) return s;
  if (tokens.empty()) return absl::InvalidArgumentError("Prefill: no tokens");
  if (absl::Status s = CheckTokens(tokens); !s.ok()) return s;
  const int row = state_.slot_row[slot];
  const int start = state_.row_length[row];
  if (start + static_cast<int64_t>(tokens.size()) > config_.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("context overflow: slot ", slot, " holds ",
                                                   start, " positions, ", tokens.size(),
                                                   " more would exceed seq_len ", config_.seq_len));
  }
  return RunTorch("Prefill", [&]() -> absl::Status {
    // Long prompts go in chunks, which bounds the scores tensor to [KV, chunk*G, seq_len].
    torch::Tensor x;  // [chunk, dim]
    for (size_t done = 0; done < tokens.size(); done += kPrefillChunk) {
      const absl::Span<const int32_t> chunk = tokens.subspan(done, kPrefillChunk);
      x = SequenceForward(chunk, row, start + static_cast<int>(done));
    }
    const torch::Tensor out =
        Logits(x.narrow(0, x.size(0) - 1, 1)).to(torch::kCPU).contiguous();  // [1, vocab]
    std::memcpy(logits, out.data_ptr<float>(), sizeof(float) * config_.vocab_size);
    state_.row_length[row] = start + static_cast<int>(tokens.size());
    return absl::OkStatus();
  });
}

absl::Status LlamaModel::Forward(absl::Span<const int32_t> tokens, std::vector<float>* logits) {
  if (tokens.empty()) return absl::InvalidArgumentError("Forward: no tokens");
  if (static_cast<int64_t>(tokens.size()) > config_.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("context overflow: ", tokens.size(),
                                                   " tokens exceed seq_len ", config_.seq_len));
  }
  if (absl::Status s = CheckTokens(tokens); !s.ok()) return s;
  return RunTorch("Forward", [&]() -> absl::Status {
    const torch::Tensor out =
        Logits(SequenceForward(tokens, /*row=*/-1, 0)).to(torch::kCPU).contiguous();  // [n, vocab]
    const float* p = out.data_ptr<float>();
    logits->assign(p, p + out.numel());
    return absl::OkStatus();
  });
}

torch::Tensor LlamaModel::DecodeMask(const int64_t* positions, int64_t b, int64_t length) const {
  const int64_t kv = kv_heads_;
  torch::Tensor mask = torch::zeros({b * kv, 1, length});  // [b*KV, 1, L]
  float* m = mask.data_ptr<float>();
  for (int64_t r = 0; r < b * kv; ++r) {
    std::fill(m + r * length + positions[r / kv] + 1, m + (r + 1) * length,
              -std::numeric_limits<float>::infinity());
  }
  return mask.to(device_);
}

absl::Status LlamaModel::CheckDecodeSlots(absl::Span<const int> slots, int* max_row,
                                          int* max_length) const {
  std::vector<bool> seen(max_slots_, false);
  for (int slot : slots) {
    if (absl::Status s = CheckSlot(slot); !s.ok()) return s;
    if (seen[slot]) {
      return absl::InvalidArgumentError(absl::StrCat("Decode: slot ", slot, " appears twice"));
    }
    seen[slot] = true;
    const int row = state_.slot_row[slot], length = state_.row_length[row];
    if (length + 1 > config_.seq_len) {
      return absl::InvalidArgumentError(
          absl::StrCat("context overflow: slot ", slot, " holds ", length,
                       " positions, one more would exceed seq_len ", config_.seq_len));
    }
    *max_row = std::max(*max_row, row);
    *max_length = std::max(*max_length, length + 1);
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::Decode(absl::Span<const int> slots, absl::Span<const int32_t> tokens,
                                float* logits) {
  if (slots.size() != tokens.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Decode: ", slots.size(), " slots but ", tokens.size(), " tokens"));
  }
  if (slots.empty()) return absl::OkStatus();
  if (absl::Status s = CheckTokens(tokens); !s.ok()) return s;
  int max_row = 0, max_length = 0;
  if (absl::Status s = CheckDecodeSlots(slots, &max_row, &max_length); !s.ok()) return s;
  const int64_t b = slots.size(), kv = kv_heads_, g = group_, hd = head_dim_;
  // Distinct rows all below b are exactly the rows [0, b): compute in physical-row order, so that
  // the ATen path attends over views of the cache. Otherwise (a subset of the active rows)
  // compute in caller order, gathering the rows.
  const bool dense = max_row == b - 1;
  const int64_t length = max_length;  // attention span of the step: [0, length)
  const DecodePath path = ChooseDecodePath(device_);
  const bool loops = !path.aten;  // the CPU: attention in the loops
  if (loops && b < kLoopRows) {
    return RunTorch("Decode", [&]() -> absl::Status {
      DecodeRowsCpu(slots, tokens, path.width, logits);
      return absl::OkStatus();
    });
  }
  return RunTorch("Decode", [&]() -> absl::Status {
    // Step inputs, host side: tokens, positions and rows in the computed order: [3, b].
    torch::Tensor index = torch::empty({3, b}, torch::kInt64);
    std::vector<int> order(b);  // computed row i belongs to caller index order[i]
    int64_t* host = index.data_ptr<int64_t>();
    for (int64_t i = 0; i < b; ++i) {
      const int row = state_.slot_row[slots[i]];
      const int64_t at = dense ? row : i;
      order[at] = static_cast<int>(i);
      host[at] = tokens[i];
      host[b + at] = state_.row_length[row];
      host[2 * b + at] = row;
    }
    const torch::Tensor dev_mask =
        loops ? torch::Tensor() : DecodeMask(host + b, b, length);  // [b*KV, 1, L]
    const torch::Tensor dev_index = index.to(device_);  // [3, b]
    const torch::Tensor token_ids = dev_index[0], positions = dev_index[1], rows = dev_index[2];
    const torch::Tensor rope =
        weights_.rope.index_select(0, positions).view({b, 1, 1, hd / 2});  // [b, 1, 1, hd/2]
    // Where row i's new k|v go: (:, rows[i], :, positions[i], :) of the layer's cache.
    const c10::List<c10::optional<at::Tensor>> put_index(
        {c10::nullopt, rows, c10::nullopt, positions});
    torch::Tensor x = at::embedding(weights_.tok_embeddings, token_ids);  // [b, dim]
    x = RunLayers(x, rope, [&](size_t l, const torch::Tensor& qkv) {
      torch::Tensor cache = state_.kv[l];  // [2, S, KV, seq_len, hd]
      if (loops) {  // 1 op: the loops store k, v, then attend
        TORCH_CHECK(qkv.is_contiguous());
        torch::Tensor out = at::empty({b, kv * g * hd}, qkv.options());  // [b, H*hd]
        AttendCpu(qkv.data_ptr<float>(), cache, host + 2 * b, host + b, b, g, length, scale_,
                  path.width, scores_.data(), out.data_ptr<float>());
        return out;
      }
      // 1 + (dense ? 0 : 1) + 3 ops. New k|v: [b, KV, 2, hd] -> [b, 2, KV, hd].
      at::index_put_(cache, put_index, qkv.narrow(2, g, 2).permute({0, 2, 1, 3}));
      const torch::Tensor kv_rows =
          dense ? cache.narrow(1, 0, b).narrow(3, 0, length)              // [2, b, KV, L, hd] view
                : cache.narrow(3, 0, length).index_select(1, rows);       // [2, b, KV, L, hd] copy
      const torch::Tensor k = kv_rows[0].view({b * kv, length, hd});      // [b*KV, L, hd]
      const torch::Tensor v = kv_rows[1].view({b * kv, length, hd});      // [b*KV, L, hd]
      const torch::Tensor q = qkv.narrow(2, 0, g).view({b * kv, g, hd});  // [b*KV, G, hd]
      const torch::Tensor scores =
          at::baddbmm(dev_mask, q, k.transpose(1, 2), 1.0, scale_);       // [b*KV, G, L]
      return at::bmm(at::softmax(scores, -1), v).view({b, kv * g * hd});  // [b, H*hd]
    });
    const torch::Tensor out = Logits(x).to(torch::kCPU).contiguous();  // [b, vocab]
    const float* p = out.data_ptr<float>();
    const int64_t vocab = config_.vocab_size;
    for (int64_t i = 0; i < b; ++i) {
      std::memcpy(logits + order[i] * vocab, p + i * vocab, sizeof(float) * vocab);
    }
    for (int slot : slots) ++state_.row_length[state_.slot_row[slot]];
    return absl::OkStatus();
  });
}

void LlamaModel::DecodeRowsCpu(absl::Span<const int> slots, absl::Span<const int32_t> tokens,
                               Width width, float* logits) {
  RECORD_FUNCTION("tandem::DecodeRowsCpu", std::vector<c10::IValue>());
  const int64_t b = slots.size(), dim = config_.dim;
  const float* embeddings = weights_.tok_embeddings.data_ptr<float>();
  for (int64_t i = 0; i < b; ++i) {
    const int row = state_.slot_row[slots[i]];
    rows_[i] = row;
    positions_[i] = state_.row_length[row];
    std::memcpy(&x_[i * dim], embeddings + tokens[i] * dim, dim * sizeof(float));
  }
  // A thread per million multiply-adds of the step at most: tiny models stay serial.
  const int threads = static_cast<int>(
      std::clamp<int64_t>(parameter_count_ * b >> 20, 1, std::max(1, at::get_num_threads())));
  if (threads == 1) {
    DecodeRowsShare(0, 1, nullptr, b, width, logits);
  } else {
    SpinBarrier barrier;
#pragma omp parallel num_threads(threads)
    {
      barrier.SetThreads(omp_get_num_threads());
      DecodeRowsShare(omp_get_thread_num(), omp_get_num_threads(), &barrier, b, width, logits);
    }
  }
  for (int slot : slots) ++state_.row_length[state_.slot_row[slot]];
}

void LlamaModel::DecodeRowsShare(int t, int threads, SpinBarrier* barrier, int64_t b,
                                 Width width, float* logits) {
  const int64_t dim = config_.dim, hidden = config_.hidden_dim, vocab = config_.vocab_size;
  const int64_t kv = kv_heads_, g = group_, hd = head_dim_;
  const int64_t h_stride = std::max(dim, hidden), qkv_stride = kv * (g + 2) * hd;
  const float eps = config_.norm_eps;
  auto sync = [&] {
    if (barrier != nullptr) barrier->Wait();
  };
  // out[m] = w in[m] (+ residual[m]) for every row m, over this thread's share of w's rows
  // (w [rows, cols]; in, out and residual rows of the given strides).
  auto matmat = [&](const torch::Tensor& w, const float* in, int64_t in_stride,
                    const float* residual, float* out, int64_t out_stride) {
    int64_t begin, end;
    Share(w.size(0), t, threads, &begin, &end);
    cpu_kernels::MatMat(width, w.data_ptr<float>(), w.size(1), in, in_stride, b, residual, out,
                        out_stride, begin, end);
  };
  int64_t row_begin, row_end;  // this thread's rows of the step, for the elementwise work
  Share(b, t, threads, &row_begin, &row_end);
  // h[m] = x[m] / rms(x[m]) (* gain) over this thread's rows. The gains of the layers' norms
  // are folded into wqkv and w13.
  auto normalize = [&](const float* gain) {
    for (int64_t m = row_begin; m < row_end; ++m) {
      const float* x = &x_[m * dim];
      float* h = &h_[m * h_stride];
      const float s = cpu_kernels::InvRms(width, x, dim, eps);
      for (int64_t i = 0; i < dim; ++i) h[i] = gain ? x[i] * s * gain[i] : x[i] * s;
    }
  };
  const float* rope =  // (cos, sin) pairs [seq_len, hd/2]
      reinterpret_cast<const float*>(weights_.rope.data_ptr<c10::complex<float>>());
  cpu_kernels::AttentionStep step{};
  step.qkv = qkv_.data();
  step.scores = scores_.data();
  step.out = attn_.data();
  step.rows = rows_.data();
  step.positions = positions_.data();
  step.slots = max_slots_;
  step.kv_heads = kv;
  step.g = g;
  step.hd = hd;
  step.seq_len = config_.seq_len;
  step.length = *std::max_element(positions_.begin(), positions_.begin() + b) + 1;
  step.scale = static_cast<float>(scale_);
  int64_t task_begin, task_end;  // this thread's (row, kv head) attention tasks
  Share(b * kv, t, threads, &task_begin, &task_end);
  for (size_t l = 0; l < weights_.layers.size(); ++l) {
    const LayerWeights& w = weights_.layers[l];
    // Attention.
    normalize(nullptr);
    sync();  // h whole
    matmat(w.wqkv, h_.data(), h_stride, nullptr, qkv_.data(), qkv_stride);  // [b, KV, G+2, hd]
    sync();  // qkv whole
    for (int64_t task = task_begin; task < task_end; ++task) {
      // Rotate the G queries and the key of kv head j of row i by the row's position.
      const int64_t i = task / kv, j = task % kv;
      const float* angle = rope + positions_[i] * hd;
      for (int64_t head = 0; head <= g; ++head) {
        float* v = &qkv_[i * qkv_stride + (j * (g + 2) + head) * hd];
        for (int64_t p = 0; p < hd / 2; ++p) {
          const float c = angle[2 * p], sn = angle[2 * p + 1], v0 = v[2 * p], v1 = v[2 * p + 1];
          v[2 * p] = v0 * c - v1 * sn;
          v[2 * p + 1] = v0 * sn + v1 * c;
        }
      }
    }
    step.kv = state_.kv[l].data_ptr<float>();
    cpu_kernels::AttentionScores(width, step, task_begin, task_end);
    cpu_kernels::AttentionSoftmax(step, task_begin, task_end);
    cpu_kernels::AttentionValues(width, step, task_begin, task_end);
    sync();  // attention output whole
    matmat(w.wo, attn_.data(), kv * g * hd, x_.data(), x_.data(), dim);  // x += wo attn
    sync();  // x whole
    // SwiGLU.
    normalize(nullptr);
    sync();  // h whole
    matmat(w.w13, h_.data(), h_stride, nullptr, h13_.data(), 2 * hidden);  // [b, 2*hidden]
    sync();  // h13 whole
    for (int64_t m = row_begin; m < row_end; ++m) {  // h = silu(w1 h) * (w3 h)
      const float* h13 = &h13_[m * 2 * hidden];
      float* h = &h_[m * h_stride];
      for (int64_t i = 0; i < hidden; ++i) {
        h[i] = h13[i] / (1.0f + std::exp(-h13[i])) * h13[hidden + i];
      }
    }
    sync();  // the activation whole
    matmat(w.w2, h_.data(), h_stride, x_.data(), x_.data(), dim);  // x += w2 act
    sync();  // x whole
  }
  normalize(weights_.norm.data_ptr<float>());
  sync();  // h whole
  matmat(weights_.output, h_.data(), h_stride, nullptr, logits, vocab);
}

}  // namespace

absl::StatusOr<std::unique_ptr<TextModel>> CreateLlamaModel(const LlamaConfig& config,
                                                            const TensorMap& weights,
                                                            const TextModelOptions& options) {
  absl::StatusOr<LlamaConfig> checked = CheckedConfig(config);
  if (!checked.ok()) return checked.status();
  const LlamaConfig& c = *checked;
  if (options.max_slots < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_slots must be at least 1, got ", options.max_slots));
  }
  // Shapes and names first: cheap, and the most likely mistakes.
  const std::vector<NamedShape> expected = ExpectedTensors(c);
  absl::Status shapes =
      torch_util::CheckTensorShapes(expected, weights, [](const std::string& name) {
        return std::string(name == "output.weight"
                               ? " (the config ties the output to tok_embeddings)"
                               : "");
      });
  if (!shapes.ok()) return shapes;
  return torch_util::RunOnDevice(
      "CreateLlamaModel", options.device,
      [&](const torch::Device& device) -> absl::StatusOr<std::unique_ptr<TextModel>> {
        std::map<std::string, torch::Tensor> tensors;
        int64_t parameters = 0;
        for (const NamedShape& e : expected) {
          absl::StatusOr<torch::Tensor> t = ToFloatTensor(e.name, weights.at(e.name));
          if (!t.ok()) return t.status();
          parameters += t->numel();
          tensors.emplace(e.name, *std::move(t));
        }
        auto model = std::make_unique<LlamaModel>(c, device, options.max_slots, parameters);
        model->Load(tensors);
        return std::unique_ptr<TextModel>(std::move(model));
      });
}

absl::StatusOr<TensorMap> RandomLlamaWeights(const LlamaConfig& config, uint64_t seed) {
  absl::StatusOr<LlamaConfig> checked = CheckedConfig(config);
  if (!checked.ok()) return checked.status();
  return RunTorch("RandomLlamaWeights", [&]() -> absl::StatusOr<TensorMap> {
    // A private generator: the process-wide RNG is neither read nor advanced.
    at::Generator gen = at::detail::createCPUGenerator(seed);
    const double out_std = 0.02 / std::sqrt(2.0 * checked->n_layers);
    TensorMap out;
    for (const NamedShape& e : ExpectedTensors(*checked)) {
      const bool is_norm = e.shape.size() == 1;
      const bool is_out_proj =
          absl::EndsWith(e.name, "wo.weight") || absl::EndsWith(e.name, "w2.weight");
      const torch::Tensor t = is_norm ? torch::ones(e.shape)
                                      : at::normal(0.0, is_out_proj ? out_std : 0.02, e.shape, gen);
      out.emplace(e.name, FromFloatTensor(t));
    }
    return out;
  });
}

}  // namespace tandem

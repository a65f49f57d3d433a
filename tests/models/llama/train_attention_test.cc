// The fused CPU attention of the training forward (train_attention.h, behind
// CausalSelfAttention) against the ATen formulation: outputs and all three gradients, over
// shapes that exercise every tail (head dims and lengths that are not whole vectors, groups of
// 1 and of several query heads), every vector width, and row independence.
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "models/llama/cpu_kernels.h"
#include "models/llama/llama_train_net.h"
#include "models/llama/train_attention.h"

namespace tandem {
namespace {

struct Shape {
  int64_t b, t, h, kv, hd;
};

struct Result {
  torch::Tensor out, dq, dk, dv;
};

// Forward and backward of CausalSelfAttention on seeded inputs, with a seeded upstream gradient.
Result RunAttention(const Shape& s, bool fused, uint64_t seed = 7) {
  torch::manual_seed(seed);
  torch::Tensor q = torch::randn({s.b, s.t, s.h, s.hd}).set_requires_grad(true);
  torch::Tensor k = torch::randn({s.b, s.t, s.kv, s.hd}).set_requires_grad(true);
  torch::Tensor v = torch::randn({s.b, s.t, s.kv, s.hd}).set_requires_grad(true);
  torch::Tensor up = torch::randn({s.b, s.t, s.h * s.hd});
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.hd));
  torch::Tensor out = CausalSelfAttention(q, k, v, scale, fused);  // [B, T, H*hd]
  (out * up).sum().backward();
  return {out.detach(), q.grad(), k.grad(), v.grad()};
}

void ExpectClose(const torch::Tensor& got, const torch::Tensor& want, const char* what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const double err = (got - want).abs().max().item<double>();
  const double mag = want.abs().max().item<double>();
  EXPECT_LE(err, 2e-5 * std::max(1.0, mag)) << what << ": max error " << err << " of " << mag;
}

TEST(TrainAttentionTest, FusedMatchesAtenOutputsAndGradients) {
  for (const Shape& s : {Shape{2, 16, 4, 2, 8}, Shape{3, 37, 6, 3, 32}, Shape{1, 128, 6, 3, 32},
                         Shape{2, 21, 4, 4, 12}, Shape{1, 5, 3, 1, 20}, Shape{2, 1, 2, 1, 16}}) {
    SCOPED_TRACE(testing::Message() << "B " << s.b << " T " << s.t << " H " << s.h << " KV "
                                    << s.kv << " hd " << s.hd);
    const Result fused = RunAttention(s, true), aten = RunAttention(s, false);
    ExpectClose(fused.out, aten.out, "out");
    ExpectClose(fused.dq, aten.dq, "dq");
    ExpectClose(fused.dk, aten.dk, "dk");
    ExpectClose(fused.dv, aten.dv, "dv");
  }
}

// A sequence computes the same bits alone or in a batch (the determinism a chunked micro-batch
// relies on), and a rerun the same bits again.
TEST(TrainAttentionTest, ASequenceGivesTheSameBitsAloneOrInABatch) {
  const Shape batch{3, 29, 4, 2, 16};
  const Result all = RunAttention(batch, true), again = RunAttention(batch, true);
  EXPECT_TRUE(torch::equal(all.out, again.out));
  EXPECT_TRUE(torch::equal(all.dk, again.dk));
  torch::manual_seed(7);
  torch::Tensor q = torch::randn({3, 29, 4, 16}), k = torch::randn({3, 29, 2, 16}),
                v = torch::randn({3, 29, 2, 16});
  for (int64_t i = 0; i < 3; ++i) {
    torch::Tensor one = CausalSelfAttention(q.narrow(0, i, 1), k.narrow(0, i, 1),
                                            v.narrow(0, i, 1), 0.25, true);  // [1, T, H*hd]
    EXPECT_TRUE(torch::equal(one[0], all.out[i])) << "sequence " << i;
  }
}

// Every vector width the kernels have computes the same attention, within rounding.
TEST(TrainAttentionTest, EveryWidthAgrees) {
  using cpu_kernels::Width;
  const Shape s{2, 33, 4, 2, 24};
  torch::manual_seed(3);
  const torch::Tensor q = torch::randn({s.b, s.t, s.h, s.hd});
  const torch::Tensor k = torch::randn({s.b, s.t, s.kv, s.hd});
  const torch::Tensor v = torch::randn({s.b, s.t, s.kv, s.hd});
  const torch::Tensor dout = torch::randn_like(q);
  cpu_kernels::CausalAttention a;
  a.batch = s.b, a.seq = s.t, a.heads = s.h, a.kv_heads = s.kv, a.head_dim = s.hd, a.scale = 0.3f;
  std::vector<Result> results;
  std::vector<Width> widths = {Width::k4};
  if (cpu_kernels::WidestWidth() != Width::k4) widths.push_back(Width::k8);
  if (cpu_kernels::WidestWidth() == Width::k16) widths.push_back(Width::k16);
  for (Width w : widths) {
    Result r{torch::empty_like(q), torch::empty_like(q), torch::empty_like(k),
             torch::empty_like(v)};
    torch::Tensor lse = torch::empty({s.b, s.h, s.t});  // [B, H, T]
    cpu_kernels::CausalAttentionForward(w, a, q.data_ptr<float>(), k.data_ptr<float>(),
                                        v.data_ptr<float>(), r.out.data_ptr<float>(),
                                        lse.data_ptr<float>(), 0, a.tasks());
    cpu_kernels::CausalAttentionBackward(w, a, q.data_ptr<float>(), k.data_ptr<float>(),
                                         v.data_ptr<float>(), r.out.data_ptr<float>(),
                                         lse.data_ptr<float>(), dout.data_ptr<float>(),
                                         r.dq.data_ptr<float>(), r.dk.data_ptr<float>(),
                                         r.dv.data_ptr<float>(), 0, a.tasks());
    results.push_back(r);
  }
  for (size_t i = 1; i < results.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "width " << static_cast<int>(widths[i]));
    ExpectClose(results[i].out, results[0].out, "out");
    ExpectClose(results[i].dq, results[0].dq, "dq");
    ExpectClose(results[i].dk, results[0].dk, "dk");
    ExpectClose(results[i].dv, results[0].dv, "dv");
  }
}

}  // namespace
}  // namespace tandem

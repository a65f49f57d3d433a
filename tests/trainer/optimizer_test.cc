// The training optimizer (trainer/optimizer.h): AdamW's step against its closed form, clipping,
// which parameters decay; Muon's parameter choice, Newton-Schulz orthogonalisation (float32 and
// bfloat16), and two steps against its update rule.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <utility>

#include "models/formats/safetensors.h"
#include "trainer/optimizer.h"

namespace tandem {
namespace {

TEST(AdamWTest, NormsBiasesAndEmbeddingsAreExemptFromDecayByDefault) {
  EXPECT_TRUE(DecayByDefault("layers.0.attention.wq.weight", torch::zeros({4, 4}), false));
  EXPECT_TRUE(DecayByDefault("unet.conv_in.weight", torch::zeros({4, 1, 3, 3}), false));
  EXPECT_FALSE(DecayByDefault("layers.0.ffn_norm.weight", torch::zeros({4}), false));
  EXPECT_FALSE(DecayByDefault("unet.conv_in.bias", torch::zeros({4}), false));
  EXPECT_FALSE(DecayByDefault("tok_embeddings.weight", torch::zeros({8, 4}), false));
  EXPECT_FALSE(DecayByDefault("text.pos_embed.weight", torch::zeros({8, 4}), false));
  EXPECT_TRUE(DecayByDefault("tok_embeddings.weight", torch::zeros({8, 4}), true));
}

TEST(AdamWTest, OneStepMatchesTheClosedForm) {
  // First step: m = (1-b1) g, v = (1-b2) g^2, bias-corrected -> p -= lr * g/|g| (+ decay).
  torch::Tensor p = torch::tensor({1.0f, -2.0f}).set_requires_grad(true);
  p.mutable_grad() = torch::tensor({0.5f, -4.0f});
  Optimizer opt({{"w", p, true}}, {0.9, 0.95, 1e-8, 0.1});
  const double norm = opt.Step(/*lr=*/0.01, /*grad_clip=*/0);
  EXPECT_NEAR(norm, std::sqrt(0.25 + 16.0), 1e-6);
  EXPECT_NEAR(p[0].item<float>(), 1.0 * (1 - 0.001) - 0.01, 1e-6);
  EXPECT_NEAR(p[1].item<float>(), -2.0 * (1 - 0.001) + 0.01, 1e-6);
}

TEST(AdamWTest, ClippingScalesTheGradientToTheLimit) {
  torch::Tensor p = torch::zeros({2}).set_requires_grad(true);
  p.mutable_grad() = torch::tensor({3.0f, 4.0f});  // norm 5
  Optimizer a({{"w", p, false}}, {0.9, 0.95, 1e-8, 0.0});
  EXPECT_NEAR(a.Step(0.1, 1.0), 5.0, 1e-6);  // the norm before clipping is reported
  // Adam's first step is scale-free, so check the moment: m = 0.1 * g * (1/5).
  TensorMap state = a.State();
  const float* m = reinterpret_cast<const float*>(state.at("m.w").bytes.data());
  EXPECT_NEAR(m[0], 0.1 * 3.0 / 5.0, 1e-6);
  EXPECT_NEAR(m[1], 0.1 * 4.0 / 5.0, 1e-6);
}

TEST(MuonTest, OrthogonalizeByDefaultPicksTheHiddenMatrices) {
  EXPECT_TRUE(OrthogonalizeByDefault("layers.0.attention.wq.weight", torch::zeros({4, 4})));
  EXPECT_TRUE(OrthogonalizeByDefault("layers.2.feed_forward.w2.weight", torch::zeros({4, 8})));
  EXPECT_FALSE(OrthogonalizeByDefault("tok_embeddings.weight", torch::zeros({8, 4})));
  EXPECT_FALSE(OrthogonalizeByDefault("text.pos_embed.weight", torch::zeros({8, 4})));
  EXPECT_FALSE(OrthogonalizeByDefault("output.weight", torch::zeros({8, 4})));
  EXPECT_FALSE(OrthogonalizeByDefault("layers.0.ffn_norm.weight", torch::zeros({4})));
  EXPECT_FALSE(OrthogonalizeByDefault("unet.conv_in.weight", torch::zeros({4, 1, 3, 3})));
}

// A matrix with singular values spread over two decades, [rows, cols].
torch::Tensor Spread(int64_t rows, int64_t cols) {
  torch::manual_seed(7);
  const int64_t k = std::min(rows, cols);
  torch::Tensor u = std::get<0>(torch::linalg_qr(torch::randn({rows, k})));  // [rows, k]
  torch::Tensor v = std::get<0>(torch::linalg_qr(torch::randn({cols, k})));  // [cols, k]
  torch::Tensor s = torch::logspace(-1, 1, k);                                // [k]
  return torch::matmul(u * s, v.t());                                         // [rows, cols]
}

TEST(MuonTest, NewtonSchulzBringsEverySingularValueNearOne) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{16, 48}, {48, 16}, {24, 24}}) {
    SCOPED_TRACE(::testing::Message() << rows << "x" << cols);
    torch::Tensor g = Spread(rows, cols);
    torch::Tensor s = torch::linalg_svdvals(NewtonSchulz5(g));  // [min(rows, cols)]
    EXPECT_GT(s.min().item<float>(), 0.6);
    EXPECT_LT(s.max().item<float>(), 1.25);
    // In bfloat16 (a bf16-mixed run's) too, within its rounding.
    s = torch::linalg_svdvals(NewtonSchulz5(g.to(torch::kBFloat16)).to(torch::kFloat));
    EXPECT_GT(s.min().item<float>(), 0.55);
    EXPECT_LT(s.max().item<float>(), 1.3);
    // Orthogonalisation keeps the singular vectors: the result points where g does.
    EXPECT_GT((NewtonSchulz5(g) * g).sum().item<float>(), 0);
  }
  // A batch is each of its matrices on its own.
  torch::Tensor a = Spread(16, 48), b = 3 * Spread(16, 48).flip({0});
  torch::Tensor both = NewtonSchulz5(torch::stack({a, b}));  // [2, 16, 48]
  EXPECT_TRUE(torch::allclose(both[0], NewtonSchulz5(a), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(both[1], NewtonSchulz5(b), 1e-5, 1e-6));
}

// Two steps against the update rule written out: m = mu m + g; p = p (1 - lr wd) - lr * 0.2 *
// sqrt(max(rows, cols)) * NS5(g + mu m). A 1-D parameter beside it still takes AdamW's step.
TEST(MuonTest, TwoStepsMatchTheUpdateRule) {
  torch::Tensor w0 = Spread(8, 32), g1 = Spread(8, 32).flip({1}), g2 = Spread(8, 32).flip({0});
  torch::Tensor w = w0.clone().set_requires_grad(true);
  torch::Tensor gain = torch::tensor({1.0f, -2.0f}).set_requires_grad(true);
  Optimizer opt({{"layers.0.wq.weight", w, true, true}, {"gain", gain, false, false}},
                {0.9, 0.95, 1e-8, 0.1});
  const double lr = 0.01, scale = 0.2 * std::sqrt(32.0), mu = 0.95;
  w.mutable_grad() = g1.clone();
  gain.mutable_grad() = torch::tensor({0.5f, -4.0f});
  opt.Step(lr, /*grad_clip=*/0);
  torch::Tensor m = g1;
  torch::Tensor expected = w0 * (1 - lr * 0.1) - lr * scale * NewtonSchulz5(g1 + mu * m);
  EXPECT_TRUE(torch::allclose(w.detach(), expected, 1e-5, 1e-6));
  EXPECT_NEAR(gain[0].item<float>(), 1.0 - 0.01, 1e-6);  // AdamW's first step, no decay
  w.mutable_grad() = g2.clone();
  opt.Step(lr, 0);
  m = mu * m + g2;
  expected = expected * (1 - lr * 0.1) - lr * scale * NewtonSchulz5(g2 + mu * m);
  EXPECT_TRUE(torch::allclose(w.detach(), expected, 1e-5, 1e-6));
  TensorMap state = opt.State();  // the momentum is checkpointed as the parameter's "m."
  ASSERT_EQ(state.count("m.layers.0.wq.weight"), 1u);
  EXPECT_EQ(state.count("v.layers.0.wq.weight"), 1u);
}

}  // namespace
}  // namespace tandem

// The fused CPU element-wise layers of the training forward (train_elementwise.h, behind
// RmsNorm / SwiGlu / Rope of llama_train_net.h) against their ATen formulations: outputs and
// gradients over shapes with vector tails, every vector width, and independence from the thread
// count (RMSNorm's gain gradient sums across rows).
#include <torch/torch.h>

#include <vector>

#include "gtest/gtest.h"
#include "models/llama/cpu_kernels.h"
#include "models/llama/llama_train_net.h"
#include "models/llama/train_elementwise.h"

namespace tandem {
namespace {

void ExpectClose(const torch::Tensor& got, const torch::Tensor& want, const char* what,
                 double tolerance = 2e-5) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const double err = (got - want).abs().max().item<double>();
  const double mag = want.abs().max().item<double>();
  EXPECT_LE(err, tolerance * std::max(1.0, mag)) << what << ": max error " << err << " of " << mag;
}

struct Grads {
  torch::Tensor out;
  std::vector<torch::Tensor> grads;
};

// out = f(inputs) and the inputs' gradients for a seeded upstream gradient.
template <typename F>
Grads Differentiate(std::vector<torch::Tensor> inputs, F&& f, uint64_t seed = 11) {
  for (torch::Tensor& t : inputs) t = t.detach().clone().set_requires_grad(true);
  torch::Tensor out = f(inputs);
  torch::manual_seed(seed);
  (out * torch::randn_like(out)).sum().backward();
  Grads g{out.detach(), {}};
  for (torch::Tensor& t : inputs) g.grads.push_back(t.grad());
  return g;
}

void ExpectSame(const Grads& fused, const Grads& aten) {
  ExpectClose(fused.out, aten.out, "out");
  for (size_t i = 0; i < aten.grads.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "gradient of input " << i);
    ExpectClose(fused.grads[i], aten.grads[i], "gradient");
  }
}

TEST(TrainElementwiseTest, RmsNormMatchesAten) {
  for (const auto& shape : std::vector<std::vector<int64_t>>{{2, 16, 192}, {3, 7, 37}, {130, 5}}) {
    SCOPED_TRACE(testing::Message() << "shape " << torch::IntArrayRef(shape));
    torch::manual_seed(1);
    const torch::Tensor x = torch::randn(shape) * 3, gain = torch::rand({shape.back()}) + 0.5;
    auto norm = [](bool fused) {
      return [fused](const std::vector<torch::Tensor>& in) {
        return RmsNorm(in[0], in[1], 1e-5, fused);
      };
    };
    ExpectSame(Differentiate({x, gain}, norm(true)), Differentiate({x, gain}, norm(false)));
  }
}

TEST(TrainElementwiseTest, SwiGluMatchesAten) {
  for (const auto& shape : std::vector<std::vector<int64_t>>{{2, 16, 512}, {3, 7, 37}, {5}}) {
    SCOPED_TRACE(testing::Message() << "shape " << torch::IntArrayRef(shape));
    torch::manual_seed(2);
    // Wide inputs: the sigmoid's saturated ends and its middle.
    const torch::Tensor a = torch::randn(shape) * 6, b = torch::randn(shape);
    auto swiglu = [](bool fused) {
      return [fused](const std::vector<torch::Tensor>& in) { return SwiGlu(in[0], in[1], fused); };
    };
    ExpectSame(Differentiate({a, b}, swiglu(true)), Differentiate({a, b}, swiglu(false)));
  }
}

TEST(TrainElementwiseTest, RopeMatchesAten) {
  for (const auto& s : std::vector<std::vector<int64_t>>{{2, 16, 6, 32}, {1, 9, 3, 10}}) {
    SCOPED_TRACE(testing::Message() << "shape " << torch::IntArrayRef(s));
    torch::manual_seed(3);
    const torch::Tensor x = torch::randn(s);
    const torch::Tensor angle = torch::rand({s[1], s[3] / 2}) * 6;  // [T, hd/2]
    const torch::Tensor cos = angle.cos(), sin = angle.sin();
    auto rope = [&](bool fused) {
      return [&, fused](const std::vector<torch::Tensor>& in) {
        return Rope(in[0], cos, sin, fused);
      };
    };
    ExpectSame(Differentiate({x}, rope(true)), Differentiate({x}, rope(false)));
  }
}

// The kernels' results do not depend on how many threads split the rows: the same bits on one
// thread as on several, RMSNorm's gain gradient (summed across rows) included.
TEST(TrainElementwiseTest, TheSameBitsOnAnyNumberOfThreads) {
  torch::manual_seed(4);
  const torch::Tensor x = torch::randn({300, 96}), gain = torch::rand({96}) + 0.5;
  const torch::Tensor a = torch::randn({300, 96}) * 4;
  auto both = [&](const std::vector<torch::Tensor>& in) {
    return SwiGlu(RmsNorm(in[0], in[1], 1e-5, true), in[2], true);
  };
  const int threads = torch::get_num_threads();
  torch::set_num_threads(1);
  const Grads one = Differentiate({x, gain, a}, both);
  torch::set_num_threads(3);
  const Grads three = Differentiate({x, gain, a}, both);
  torch::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one.out, three.out));
  for (size_t i = 0; i < one.grads.size(); ++i) {
    EXPECT_TRUE(torch::equal(one.grads[i], three.grads[i])) << "gradient of input " << i;
  }
}

// Every vector width the kernels have computes the same layers, within rounding.
TEST(TrainElementwiseTest, EveryWidthAgrees) {
  using cpu_kernels::Width;
  torch::manual_seed(5);
  const int64_t rows = 9, dim = 45;
  const torch::Tensor x = torch::randn({rows, dim}), gain = torch::rand({dim}) + 0.5;
  const torch::Tensor dy = torch::randn({rows, dim}), b = torch::randn({rows, dim});
  std::vector<Width> widths = {Width::k4};
  if (cpu_kernels::WidestWidth() != Width::k4) widths.push_back(Width::k8);
  if (cpu_kernels::WidestWidth() == Width::k16) widths.push_back(Width::k16);
  std::vector<std::vector<torch::Tensor>> results;
  for (Width w : widths) {
    torch::Tensor y = torch::empty_like(x), inv = torch::empty({rows}), dx = torch::empty_like(x);
    torch::Tensor dgain = torch::zeros({dim}), s = torch::empty_like(x);
    torch::Tensor da = torch::empty_like(x), db = torch::empty_like(x);
    const float* xp = x.data_ptr<float>();
    cpu_kernels::RmsNormForward(w, xp, gain.data_ptr<float>(), dim, 1e-5f, y.data_ptr<float>(),
                                inv.data_ptr<float>(), 0, rows);
    cpu_kernels::RmsNormBackward(w, xp, gain.data_ptr<float>(), inv.data_ptr<float>(),
                                 dy.data_ptr<float>(), dim, dx.data_ptr<float>(),
                                 dgain.data_ptr<float>(), 0, rows);
    cpu_kernels::SwiGluForward(w, xp, b.data_ptr<float>(), s.data_ptr<float>(), 0, rows * dim);
    cpu_kernels::SwiGluBackward(w, xp, b.data_ptr<float>(), dy.data_ptr<float>(),
                                da.data_ptr<float>(), db.data_ptr<float>(), 0, rows * dim);
    results.push_back({y, dx, dgain, s, da, db});
  }
  for (size_t i = 1; i < results.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "width " << static_cast<int>(widths[i]));
    for (size_t k = 0; k < results[0].size(); ++k) {
      ExpectClose(results[i][k], results[0][k], "result");
    }
  }
}

}  // namespace
}  // namespace tandem

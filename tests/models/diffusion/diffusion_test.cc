// The LibTorch diffusion model: config JSON and validation, the exact parameter count, the cosine
// schedule against the forward process it stands for, the sampler update against an oracle,
// seed determinism, and batch invariance (a sample's pixels are bit-for-bit the same whether it
// was stepped alone or batched with other samples at other steps).
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/diffusion/diffusion_config.h"
#include "models/diffusion/diffusion_model.h"
#include "models/diffusion/diffusion_schedule.h"
#include "models/image_model.h"
#include "nlohmann/json.hpp"
#include "models/torch/device.h"
#include "tests/testing/base/matchers.h"
#include "tests/testing/base/tiny_configs.h"

namespace tandem {
namespace {

using testing::Contains;

// 8x8 RGB, two levels (attention at the second and in the middle), T = 100, eps-prediction.
DiffusionConfig TinyConfig() {
  DiffusionConfig c = testing::TinyDiffusionShape();
  c.prediction = "eps";
  c.default_steps = 20;
  c.default_guidance = 3.0f;
  EXPECT_TRUE(c.Normalize().ok());
  return c;
}

// Grey 12x12, three levels, attention at full resolution too, two res blocks, v-prediction.
// Rows of sizes that are not multiples of the vector width (9 x 20 at the last level), so that
// kernels that vectorise over a whole batch would treat a row's tail differently.
DiffusionConfig TinyConfigV() {
  DiffusionConfig c = TinyConfig();
  c.image_size = 12;
  c.channels = 1;
  c.unet_widths = {12, 12, 20};
  c.res_blocks = 2;
  c.attention_levels = {0, 2};
  c.prediction = "v";
  EXPECT_TRUE(c.Normalize().ok());
  return c;
}

std::unique_ptr<DiffusionModel> MakeModel(const DiffusionConfig& config, uint64_t seed,
                                          int max_samples = 8, const std::string& device = "cpu") {
  absl::StatusOr<TensorMap> weights = RandomDiffusionWeights(config, seed);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return nullptr;
  ImageModelOptions options;
  options.device = device;
  options.max_samples = max_samples;
  absl::StatusOr<std::unique_ptr<DiffusionModel>> model =
      DiffusionModel::Create(config, *weights, options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

ImageSampleSpec Spec(std::vector<int32_t> caption, int steps, float guidance,
                     DiffusionSampler sampler, float eta, uint64_t seed,
                     std::vector<int32_t> negative = {}) {
  ImageSampleSpec s;
  s.caption = std::move(caption);
  s.negative_caption = std::move(negative);
  s.steps = steps;
  s.guidance = guidance;
  s.sampler = sampler;
  s.eta = eta;
  s.seed = seed;
  return s;
}

std::vector<uint8_t> PixelsOf(ImageModel* model, int sample) {
  std::vector<uint8_t> pixels;
  absl::Status s = model->Pixels(sample, &pixels);
  EXPECT_TRUE(s.ok()) << s;
  return pixels;
}

// A sample's run: its float state after every step, and its final pixels.
struct SampleRun {
  std::vector<std::vector<float>> xs;  // x after each step (CHW), then x_0 estimate of the last
  std::vector<uint8_t> pixels;
};

// Appends the sample's current x and x_0 estimate.
void Record(const DiffusionModel& model, int sample, SampleRun* run) {
  std::vector<float> x, x0;
  const absl::Status s = model.Latent(sample, &x, &x0);
  EXPECT_TRUE(s.ok()) << s;
  run->xs.push_back(std::move(x));
  run->xs.push_back(std::move(x0));
}

// Bit-for-bit equality of two runs (floats compared as bytes).
::testing::AssertionResult SameBits(const SampleRun& a, const SampleRun& b) {
  if (a.pixels != b.pixels) return ::testing::AssertionFailure() << "pixels differ";
  if (a.xs.size() != b.xs.size()) {
    return ::testing::AssertionFailure() << a.xs.size() << " vs " << b.xs.size() << " records";
  }
  for (size_t i = 0; i < a.xs.size(); ++i) {
    if (a.xs[i].size() != b.xs[i].size() ||
        std::memcmp(a.xs[i].data(), b.xs[i].data(), a.xs[i].size() * sizeof(float)) != 0) {
      float worst = 0;
      for (size_t j = 0; j < std::min(a.xs[i].size(), b.xs[i].size()); ++j) {
        worst = std::max(worst, std::fabs(a.xs[i][j] - b.xs[i][j]));
      }
      return ::testing::AssertionFailure()
             << "step " << i / 2 << (i % 2 ? " x0" : " x") << " differs (max " << worst << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

// Runs one sample to the end on its own.
SampleRun RunAlone(DiffusionModel* model, const ImageSampleSpec& spec) {
  SampleRun run;
  absl::StatusOr<int> id = model->StartSample(spec);
  EXPECT_TRUE(id.ok()) << id.status();
  if (!id.ok()) return run;
  while (model->StepsDone(*id) < model->TotalSteps(*id)) {
    absl::Status s = model->Step({*id});
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) break;
    Record(*model, *id, &run);
  }
  run.pixels = PixelsOf(model, *id);
  model->ReleaseSample(*id);
  return run;
}

// The specs of the batch-invariance scenario: DDIM (eta 0 and 0.5) and DDPM, guided and not,
// with and without a negative caption, different lengths.
std::vector<ImageSampleSpec> MixedSpecs(int vocab) {
  const int32_t v = vocab;
  return {
      Spec({5, 9, 12}, 6, 3.0f, DiffusionSampler::kDdim, 0.0f, 11, {7, 7}),
      Spec({3}, 9, 1.0f, DiffusionSampler::kDdim, 0.5f, 12),
      Spec({v - 1, 2, 4, 8, 16, 32, 1, 2, 3, 4}, 7, 2.5f, DiffusionSampler::kDdpm, 0.0f, 13),
      Spec({}, 5, 1.0f, DiffusionSampler::kDdpm, 0.0f, 14),
      Spec({6, 6}, 8, 4.0f, DiffusionSampler::kDdim, 0.5f, 15, {9}),
  };
}

// Runs the specs interleaved: samples start at different times and are stepped in varying
// batches and orders, so that each is batched with others at different steps. Returns the final
// pixels of each spec, in spec order.
std::vector<SampleRun> RunInterleaved(DiffusionModel* model,
                                      const std::vector<ImageSampleSpec>& specs) {
  std::vector<int> ids(specs.size(), -1);
  std::vector<SampleRun> out(specs.size());
  auto start = [&](size_t i) {
    absl::StatusOr<int> id = model->StartSample(specs[i]);
    EXPECT_TRUE(id.ok()) << id.status();
    ids[i] = id.ok() ? *id : -1;
  };
  auto unfinished = [&]() {
    std::vector<size_t> live;
    for (size_t i = 0; i < specs.size(); ++i) {
      if (ids[i] >= 0 && model->StepsDone(ids[i]) < model->TotalSteps(ids[i])) live.push_back(i);
    }
    return live;
  };
  auto step = [&](std::vector<size_t> which) {
    std::vector<int> batch;
    for (size_t i : which) batch.push_back(ids[i]);
    absl::Status s = model->Step(batch);
    EXPECT_TRUE(s.ok()) << s;
    for (size_t i : which) Record(*model, ids[i], &out[i]);
  };
  start(0);
  step({0});
  step({0});
  start(1);
  step({1, 0});
  start(2);
  start(3);
  step({2, 0, 3, 1});
  step({3});
  int round = 0;
  bool started_last = false;
  while (true) {
    std::vector<size_t> live = unfinished();
    if (!started_last && round == 2) {
      start(4);
      started_last = true;
      live = unfinished();
    }
    if (live.empty()) break;
    // Vary the batch: reversed on odd rounds, and every third round one sample steps alone.
    if (round % 2 == 1) std::reverse(live.begin(), live.end());
    if (round % 3 == 2) live.resize(1);
    step(live);
    ++round;
  }
  if (!started_last) {
    start(4);
    while (!unfinished().empty()) step(unfinished());
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    out[i].pixels = PixelsOf(model, ids[i]);
    model->ReleaseSample(ids[i]);
  }
  return out;
}

// A CHW image of `config` from its floats, and back.
torch::Tensor Chw(const DiffusionConfig& config, const std::vector<float>& values) {
  const int64_t c = config.channels, s = config.image_size;
  return torch::tensor(values).view({c, s, s});  // [C, H, W]
}

std::vector<float> Floats(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kCPU, torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

int64_t WeightCount(const TensorMap& weights) {
  int64_t n = 0;
  for (const auto& [name, t] : weights) n += t.numel();
  return n;
}

// ------------------------------------------------------------------------------------ config

TEST(DiffusionConfigTest, JsonRoundTrip) {
  DiffusionConfig c = TinyConfigV();
  c.default_guidance = 4.5f;
  const std::string json = c.ToJson();
  EXPECT_TRUE(Contains(json, "\"kind\": \"image\""));
  EXPECT_TRUE(Contains(json, "\"architecture\": \"unet-cross-attention\""));
  absl::StatusOr<DiffusionConfig> back = DiffusionConfig::FromJson(json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(), json);
  EXPECT_EQ(back->unet_widths, c.unet_widths);
  EXPECT_EQ(back->attention_levels, c.attention_levels);
  EXPECT_EQ(back->prediction, "v");
  EXPECT_EQ(back->default_guidance, 4.5f);
  EXPECT_EQ(back->ParameterCount(), c.ParameterCount());
}

// A config.json from before pooled text conditioning (no "pooled_text") is read as such, so its
// weights still load; new configs have it and write it.
TEST(DiffusionConfigTest, PooledTextIsNewAndAbsentMeansOff) {
  DiffusionConfig c = TinyConfig();
  EXPECT_TRUE(c.pooled_text);
  const std::string json = c.ToJson();
  EXPECT_TRUE(Contains(json, "\"pooled_text\": true"));
  nlohmann::json old = nlohmann::json::parse(json);
  old.erase("pooled_text");
  absl::StatusOr<DiffusionConfig> back = DiffusionConfig::FromJson(old.dump());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_FALSE(back->pooled_text);
  DiffusionConfig off = c;
  off.pooled_text = false;
  // Every res block of the new config has its [out, text_dim] projection and bias.
  EXPECT_LT(back->ParameterCount(), c.ParameterCount());
  EXPECT_EQ(back->ParameterCount(), off.ParameterCount());
}

TEST(DiffusionConfigTest, FromJsonRejects) {
  const std::string good = TinyConfig().ToJson();
  EXPECT_TRUE(DiffusionConfig::FromJson(good).ok());
  EXPECT_FALSE(DiffusionConfig::FromJson("{").ok());
  EXPECT_TRUE(Contains(
      std::string(DiffusionConfig::FromJson(R"({"kind":"text"})").status().message()), "kind"));
  auto without = [&](const std::string& field) {
    std::string json = good;
    const size_t at = json.find("\"" + field + "\"");
    const size_t end = json.find('\n', at);
    json.erase(at, end - at + 1);
    return json;
  };
  // A missing required field is named.
  absl::Status s = DiffusionConfig::FromJson(without("groups")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(s.message()), "groups"));
  // A wrong type or a bad value is named.
  std::string json = good;
  json.replace(json.find("\"image_size\": 8"), 15, "\"image_size\": \"8\"");
  s = DiffusionConfig::FromJson(json).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(s.message()), "image_size")) << s;
  json = good;
  json.replace(json.find("\"eps\""), 5, "\"x0\"");
  s = DiffusionConfig::FromJson(json).status();
  EXPECT_TRUE(Contains(std::string(s.message()), "prediction")) << s;
  // The serving defaults are optional.
  absl::StatusOr<DiffusionConfig> minimal = DiffusionConfig::FromJson(without("default_steps"));
  ASSERT_TRUE(minimal.ok()) << minimal.status();
  EXPECT_EQ(minimal->default_steps, DiffusionConfig().default_steps);
}

TEST(DiffusionConfigTest, NormalizeNamesTheField) {
  struct Case {
    const char* field;
    void (*mutate)(DiffusionConfig*);
  };
  const Case cases[] = {
      {"image_size", [](DiffusionConfig* c) { c->image_size = 0; }},
      {"image_size",
       [](DiffusionConfig* c) {  // 10 is not divisible by 2^(3-1)
         c->image_size = 10;
         c->unet_widths = {8, 16, 16};
       }},
      {"channels", [](DiffusionConfig* c) { c->channels = 2; }},
      {"unet_widths", [](DiffusionConfig* c) { c->unet_widths = {}; }},
      {"unet_widths[1]",
       [](DiffusionConfig* c) {
         c->unet_widths = {8, -16};
       }},
      {"groups",
       [](DiffusionConfig* c) {
         c->unet_widths = {8, 18};
       }},
      {"groups",
       [](DiffusionConfig* c) {
         c->text_dim = 18;
         c->text_heads = 1;
       }},
      {"attention_heads", [](DiffusionConfig* c) { c->attention_heads = 3; }},
      {"text_heads", [](DiffusionConfig* c) { c->text_heads = 3; }},
      {"attention_levels", [](DiffusionConfig* c) { c->attention_levels = {2}; }},
      {"attention_levels",
       [](DiffusionConfig* c) {
         c->attention_levels = {1, 1};
       }},
      {"res_blocks", [](DiffusionConfig* c) { c->res_blocks = 0; }},
      {"vocab_size", [](DiffusionConfig* c) { c->vocab_size = 1; }},
      {"text_layers", [](DiffusionConfig* c) { c->text_layers = 0; }},
      {"text_seq_len", [](DiffusionConfig* c) { c->text_seq_len = 0; }},
      {"diffusion_steps", [](DiffusionConfig* c) { c->diffusion_steps = 0; }},
      {"prediction", [](DiffusionConfig* c) { c->prediction = "x0"; }},
      {"default_steps", [](DiffusionConfig* c) { c->default_steps = 101; }},
      {"default_steps", [](DiffusionConfig* c) { c->default_steps = 0; }},
      {"default_guidance", [](DiffusionConfig* c) { c->default_guidance = 0.5f; }},
  };
  for (const Case& k : cases) {
    DiffusionConfig c = TinyConfig();
    k.mutate(&c);
    const absl::Status s = c.Normalize();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << k.field;
    EXPECT_TRUE(Contains(std::string(s.message()), k.field));
  }
  // The middle block always attends: heads must divide the last width.
  DiffusionConfig c = TinyConfig();
  c.attention_levels = {};
  c.unet_widths = {12, 20};
  c.attention_heads = 3;
  c.groups = 4;
  EXPECT_TRUE(Contains(std::string(c.Normalize().message()), "unet_widths[1]"));
}

// ------------------------------------------------------------------------------------ shapes

DiffusionConfig WithoutPooledText(DiffusionConfig c) {
  c.pooled_text = false;
  return c;
}

TEST(DiffusionModelTest, ParameterCountIsExact) {
  for (const DiffusionConfig& c : {TinyConfig(), TinyConfigV(), WithoutPooledText(TinyConfigV())}) {
    absl::StatusOr<TensorMap> weights = RandomDiffusionWeights(c, 1);
    ASSERT_TRUE(weights.ok()) << weights.status();
    EXPECT_EQ(c.ParameterCount(), WeightCount(*weights)) << c.ToJson();
    std::unique_ptr<DiffusionModel> model = MakeModel(c, 1);
    ASSERT_NE(model, nullptr);
    EXPECT_EQ(model->parameter_count(), c.ParameterCount());
  }
  // A wider one, with channel changes at every level and no attention levels.
  DiffusionConfig c = TinyConfig();
  c.unet_widths = {8, 12, 16, 20};
  c.image_size = 16;
  c.attention_levels = {};
  c.attention_heads = 4;
  c.res_blocks = 3;
  c.text_layers = 2;
  ASSERT_TRUE(c.Normalize().ok());
  absl::StatusOr<TensorMap> weights = RandomDiffusionWeights(c, 1);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(c.ParameterCount(), WeightCount(*weights));
}

TEST(DiffusionModelTest, ShapesAndProgress) {
  const DiffusionConfig c = TinyConfig();
  std::unique_ptr<DiffusionModel> model = MakeModel(c, 3, 4);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->device(), "cpu");
  EXPECT_EQ(model->free_samples(), 4);
  absl::StatusOr<int> id = model->StartSample(Spec({1, 2}, 4, 2.0f, DiffusionSampler::kDdim, 0, 1));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(model->free_samples(), 3);
  EXPECT_EQ(model->TotalSteps(*id), 4);
  EXPECT_EQ(model->StepsDone(*id), 0);
  const size_t n = static_cast<size_t>(c.image_size) * c.image_size * c.channels;
  EXPECT_EQ(PixelsOf(model.get(), *id).size(), n);  // x_T before any step
  ASSERT_TRUE(model->Step({*id}).ok());
  EXPECT_EQ(model->StepsDone(*id), 1);
  EXPECT_EQ(PixelsOf(model.get(), *id).size(), n);
  while (model->StepsDone(*id) < 4) ASSERT_TRUE(model->Step({*id}).ok());
  EXPECT_EQ(PixelsOf(model.get(), *id).size(), n);
  const absl::Status past = model->Step({*id});
  EXPECT_EQ(past.code(), absl::StatusCode::kInvalidArgument) << past;
  model->ReleaseSample(*id);
  EXPECT_EQ(model->free_samples(), 4);
  std::vector<uint8_t> pixels;
  EXPECT_EQ(model->Pixels(*id, &pixels).code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------- schedule

TEST(DiffusionScheduleTest, AlphaBarIsTheProductOfOneMinusBeta) {
  const int T = 100;
  const std::vector<double> betas = CosineBetas(T);
  const std::vector<double> ab = CosineAlphaBar(T);
  ASSERT_EQ(betas.size(), static_cast<size_t>(T));
  ASSERT_EQ(ab.size(), static_cast<size_t>(T));
  const double s = 0.008, half_pi = std::acos(-1.0) / 2;
  auto f = [&](int t) { return std::pow(std::cos((double(t) / T + s) / (1 + s) * half_pi), 2); };
  double product = 1.0;
  for (int t = 0; t < T; ++t) {
    EXPECT_GT(betas[t], 0.0);
    EXPECT_LE(betas[t], 0.999);
    product *= 1.0 - betas[t];
    EXPECT_NEAR(product, ab[t], 1e-6) << t;
    // The closed form wherever no beta was clipped (all but the last timestep here).
    if (t < T - 1) {
      EXPECT_NEAR(ab[t], f(t + 1) / f(0), 1e-6) << t;
    }
    if (t > 0) {
      EXPECT_LT(ab[t], ab[t - 1]);
    }
  }
  EXPECT_NEAR(betas[T - 1], 0.999, 1e-12);  // clipped
}

TEST(DiffusionScheduleTest, ClosedFormMatchesTheIteratedForwardProcess) {
  const int T = 100, n = 40000;
  const std::vector<double> betas = CosineBetas(T);
  const std::vector<double> ab = CosineAlphaBar(T);
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal;
  const double x0 = 0.6;
  std::vector<double> x(n, x0);
  for (int t = 0; t < T; ++t) {
    for (double& v : x) v = std::sqrt(1 - betas[t]) * v + std::sqrt(betas[t]) * normal(rng);
    if (t != 0 && t != 9 && t != 49 && t != 90 && t != T - 1) continue;
    double mean = 0, var = 0;
    for (double v : x) mean += v;
    mean /= n;
    for (double v : x) var += (v - mean) * (v - mean);
    var /= n - 1;
    // Closed form: x_t ~ N(sqrt(ab) x0, 1 - ab). Tolerances: 5 standard errors.
    const double want_mean = std::sqrt(ab[t]) * x0, want_var = 1 - ab[t];
    EXPECT_NEAR(mean, want_mean, 5 * std::sqrt(want_var / n)) << "t " << t;
    EXPECT_NEAR(var, want_var, 5 * want_var * std::sqrt(2.0 / n)) << "t " << t;
  }
}

TEST(DiffusionScheduleTest, SamplingTimesteps) {
  EXPECT_EQ(SamplingTimesteps(100, 1), std::vector<int>({99}));
  EXPECT_EQ(SamplingTimesteps(100, 2), std::vector<int>({99, 0}));
  EXPECT_EQ(SamplingTimesteps(10, 4), std::vector<int>({9, 6, 3, 0}));
  EXPECT_TRUE(SamplingTimesteps(100, 0).empty());
  EXPECT_TRUE(SamplingTimesteps(100, 101).empty());
  for (int steps : {3, 7, 50, 99, 100}) {
    const std::vector<int> ts = SamplingTimesteps(100, steps);
    ASSERT_EQ(ts.size(), static_cast<size_t>(steps));
    EXPECT_EQ(ts.front(), 99);
    EXPECT_EQ(ts.back(), 0);
    for (size_t i = 1; i < ts.size(); ++i) EXPECT_LT(ts[i], ts[i - 1]);
  }
}

// With the true noise as the model output, DDIM lands on x_0 (last step) and on the noised x_0
// of the next timestep (any step), for eps- and v-prediction; DDPM's last step lands on x_0.
TEST(DiffusionScheduleTest, SamplerUpdateWithTheTrueNoiseRecoversX0) {
  for (const DiffusionConfig& c : {TinyConfig(), TinyConfigV()}) {
    const bool v = c.prediction == "v";
    const int n = c.channels * c.image_size * c.image_size;
    const std::vector<double> ab = CosineAlphaBar(c.diffusion_steps);
    std::mt19937_64 rng(3);
    std::uniform_real_distribution<double> uniform(-0.95, 0.95);
    std::normal_distribution<double> normal;
    std::vector<double> x0(n), eps(n);
    for (int i = 0; i < n; ++i) {
      x0[i] = uniform(rng);
      eps[i] = normal(rng);
    }
    for (int t : {5, 30, 60, 80}) {
      const double a = std::sqrt(ab[t]), b = std::sqrt(1 - ab[t]);
      std::vector<float> xt(n), out(n);
      for (int i = 0; i < n; ++i) {
        xt[i] = static_cast<float>(a * x0[i] + b * eps[i]);
        out[i] = static_cast<float>(v ? a * eps[i] - b * x0[i] : eps[i]);
      }
      for (int t_prev : {-1, t / 2, t - 1}) {
        for (DiffusionSampler sampler : {DiffusionSampler::kDdim, DiffusionSampler::kDdpm}) {
          if (sampler == DiffusionSampler::kDdpm && t_prev != -1) continue;  // noisy otherwise
          at::Generator gen = at::detail::createCPUGenerator(1);
          const absl::StatusOr<diffusion_model::UpdateResult> update =
              diffusion_model::SamplerUpdate(ab, v, sampler, 0.0, t, t_prev, Chw(c, xt),
                                             Chw(c, out), gen);
          ASSERT_TRUE(update.ok()) << update.status();
          const std::vector<float> x_prev = Floats(update->x_prev);
          const std::vector<float> x0_hat = Floats(update->x0);
          ASSERT_EQ(x_prev.size(), static_cast<size_t>(n));
          const double ap = t_prev >= 0 ? std::sqrt(ab[t_prev]) : 1.0;
          const double bp = t_prev >= 0 ? std::sqrt(1 - ab[t_prev]) : 0.0;
          double worst = 0, worst_x0 = 0;
          for (int i = 0; i < n; ++i) {
            worst = std::max(worst, std::fabs(x_prev[i] - (ap * x0[i] + bp * eps[i])));
            worst_x0 = std::max(worst_x0, std::fabs(x0_hat[i] - x0[i]));
          }
          EXPECT_LT(worst, 1e-5) << c.prediction << " t " << t << " -> " << t_prev;
          EXPECT_LT(worst_x0, 1e-5) << c.prediction << " t " << t;
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------- determinism

TEST(DiffusionModelTest, SeedDeterminism) {
  const DiffusionConfig c = TinyConfig();
  std::unique_ptr<DiffusionModel> model = MakeModel(c, 5);
  ASSERT_NE(model, nullptr);
  for (DiffusionSampler sampler : {DiffusionSampler::kDdim, DiffusionSampler::kDdpm}) {
    const ImageSampleSpec spec = Spec({4, 5, 6}, 5, 3.0f, sampler, 0.5f, 42);
    const SampleRun a = RunAlone(model.get(), spec);
    const SampleRun b = RunAlone(model.get(), spec);
    EXPECT_TRUE(SameBits(a, b));
    ImageSampleSpec other = spec;
    other.seed = 43;
    EXPECT_NE(RunAlone(model.get(), other).pixels, a.pixels);
    ImageSampleSpec caption = spec;
    caption.caption = {4, 5, 7};
    EXPECT_NE(RunAlone(model.get(), caption).pixels, a.pixels);
    ImageSampleSpec negative = spec;
    negative.negative_caption = {3};
    EXPECT_NE(RunAlone(model.get(), negative).pixels, a.pixels);
  }
  // A fresh model from the same weights seed gives the same pixels.
  std::unique_ptr<DiffusionModel> again = MakeModel(c, 5);
  const ImageSampleSpec spec = Spec({9}, 4, 2.0f, DiffusionSampler::kDdpm, 0.0f, 8);
  EXPECT_TRUE(SameBits(RunAlone(model.get(), spec), RunAlone(again.get(), spec)));
}

TEST(DiffusionModelTest, RandomWeightsAreDeterministicInTheSeed) {
  const DiffusionConfig c = TinyConfig();
  absl::StatusOr<TensorMap> a = RandomDiffusionWeights(c, 9);
  absl::StatusOr<TensorMap> b = RandomDiffusionWeights(c, 9);
  absl::StatusOr<TensorMap> other = RandomDiffusionWeights(c, 10);
  ASSERT_TRUE(a.ok() && b.ok() && other.ok());
  for (const auto& [name, t] : *a) {
    EXPECT_EQ(t.bytes, b->at(name).bytes) << name;
  }
  EXPECT_NE(a->at("unet.conv_in.weight").bytes, other->at("unet.conv_in.weight").bytes);
  EXPECT_NE(a->at("text.tok_embed.weight").bytes, other->at("text.tok_embed.weight").bytes);
}

void ExpectBatchInvariant(const DiffusionConfig& c, uint64_t weights_seed) {
  std::unique_ptr<DiffusionModel> model = MakeModel(c, weights_seed, 8);
  ASSERT_NE(model, nullptr);
  const std::vector<ImageSampleSpec> specs = MixedSpecs(c.vocab_size);
  std::vector<SampleRun> alone;
  for (const ImageSampleSpec& s : specs) alone.push_back(RunAlone(model.get(), s));
  const std::vector<SampleRun> batched = RunInterleaved(model.get(), specs);
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(batched[i].xs.size(), 2 * static_cast<size_t>(specs[i].steps));
    EXPECT_TRUE(SameBits(batched[i], alone[i])) << "spec " << i;
  }
  // Not vacuous: the specs give different images.
  EXPECT_NE(alone[0].pixels, alone[1].pixels);
  EXPECT_NE(alone[2].pixels, alone[4].pixels);
}

TEST(DiffusionModelTest, BatchedAtDifferentStepsEqualsAlone) {
  ExpectBatchInvariant(TinyConfig(), 21);
}

TEST(DiffusionModelTest, BatchedAtDifferentStepsEqualsAloneV) {
  ExpectBatchInvariant(TinyConfigV(), 22);
}

TEST(DiffusionModelTest, BatchedAtDifferentStepsEqualsAloneWithoutPooledText) {
  ExpectBatchInvariant(WithoutPooledText(TinyConfig()), 24);
}

// With every cross-attention's keys and values zeroed, the caption reaches the U-Net only
// through the res blocks' pooled text projections: the output depends on the caption exactly
// when the config has pooled_text.
TEST(DiffusionModelTest, PooledTextConditionsEveryResBlock) {
  for (const bool pooled : {true, false}) {
    SCOPED_TRACE(pooled ? "pooled_text" : "cross-attention only");
    DiffusionConfig c = TinyConfig();
    c.pooled_text = pooled;
    absl::StatusOr<TensorMap> weights = RandomDiffusionWeights(c, 31);
    ASSERT_TRUE(weights.ok()) << weights.status();
    int zeroed = 0;
    for (auto& [name, t] : *weights) {
      if (name.find(".cross.kv.") == std::string::npos) continue;
      std::fill(t.bytes.begin(), t.bytes.end(), 0);  // float 0 is all zero bytes
      ++zeroed;
    }
    ASSERT_GT(zeroed, 0);
    absl::StatusOr<std::unique_ptr<DiffusionModel>> model =
        DiffusionModel::Create(c, *weights, ImageModelOptions{});
    ASSERT_TRUE(model.ok()) << model.status();
    at::Generator gen = at::detail::createCPUGenerator(5);
    const torch::Tensor x =
        at::randn({1, c.channels, c.image_size, c.image_size}, gen, torch::TensorOptions());
    const absl::StatusOr<torch::Tensor> a = (*model)->RawOutput(x, {40}, {{5, 9}});
    const absl::StatusOr<torch::Tensor> b = (*model)->RawOutput(x, {40}, {{3, 7}});
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    const double diff = ((*a) - (*b)).abs().max().item<double>();
    if (pooled) {
      EXPECT_GT(diff, 1e-4);
    } else {
      EXPECT_EQ(diff, 0.0);
    }
  }
}

// The model settles its forward mode at load time (the fastest that it finds invariant); each
// mode, forced, must be invariant on its own. Should "batched" fail on some machine, the model
// there falls back to a slower mode: its fast path is not invariant with that machine's kernels.
TEST(DiffusionModelTest, BatchedEqualsAloneInEveryForwardMode) {
  for (const char* mode : {"batched", "per_row_conv", "per_row"}) {
    SCOPED_TRACE(mode);
    setenv("TANDEM_DIFFUSION_FORWARD", mode, 1);
    ExpectBatchInvariant(TinyConfig(), 23);
    unsetenv("TANDEM_DIFFUSION_FORWARD");
  }
}

// ------------------------------------------------------------------------------------ errors

TEST(DiffusionModelTest, BadSpecs) {
  const DiffusionConfig c = TinyConfig();
  std::unique_ptr<DiffusionModel> model = MakeModel(c, 2, 2);
  ASSERT_NE(model, nullptr);
  auto code = [&](ImageSampleSpec spec) { return model->StartSample(spec).status().code(); };
  const ImageSampleSpec good = Spec({1}, 3, 2.0f, DiffusionSampler::kDdim, 0.0f, 1);
  ImageSampleSpec s = good;
  s.steps = 0;
  EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
  s.steps = c.diffusion_steps + 1;
  EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
  s = good;
  s.guidance = 0.5f;
  EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
  s = good;
  s.eta = -1.0f;
  EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
  s = good;
  s.caption = {c.vocab_size};
  EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
  s = good;
  s.negative_caption = {-1};
  EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->free_samples(), 2);

  absl::StatusOr<int> a = model->StartSample(good);
  absl::StatusOr<int> b = model->StartSample(good);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(model->StartSample(good).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(model->Step({*a, *a}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Step({7}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(model->Step({*a, *b}).ok());
  model->ReleaseSample(*a);
  EXPECT_TRUE(model->StartSample(good).ok());
}

TEST(DiffusionModelTest, BadWeights) {
  const DiffusionConfig c = TinyConfig();
  absl::StatusOr<TensorMap> weights = RandomDiffusionWeights(c, 1);
  ASSERT_TRUE(weights.ok());
  ImageModelOptions options;
  const std::string name = "unet.down.0.res.0.conv1.weight";
  {
    TensorMap w = *weights;
    w[name].shape = {8, 8, 3, 2};
    w[name].bytes.resize(8 * 8 * 3 * 2 * 4);
    const absl::Status s = CreateDiffusionModel(c, w, options).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(std::string(s.message()), name));
  }
  {
    TensorMap w = *weights;
    w.erase("text.norm.bias");
    const absl::Status s = CreateDiffusionModel(c, w, options).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(std::string(s.message()), "text.norm.bias"));
  }
  {
    TensorMap w = *weights;
    w["unet.extra.weight"] = w["text.norm.bias"];
    const absl::Status s = CreateDiffusionModel(c, w, options).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(std::string(s.message()), "unet.extra.weight"));
  }
  {
    TensorMap w = *weights;
    w[name].dtype = DType::kI32;
    const absl::Status s = CreateDiffusionModel(c, w, options).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(std::string(s.message()), name));
  }
  {
    options.max_samples = 0;
    EXPECT_EQ(CreateDiffusionModel(c, *weights, options).status().code(),
              absl::StatusCode::kInvalidArgument);
    options.max_samples = 4;
    options.device = "tpu";
    EXPECT_FALSE(CreateDiffusionModel(c, *weights, options).ok());
    options.device = "cpu";
  }
  {
    // BF16 weights (the top half of each float) load.
    TensorMap w = *weights;
    for (auto& [n, t] : w) {
      std::string bytes(t.bytes.size() / 2, '\0');
      for (size_t i = 0; i < bytes.size() / 2; ++i) {
        std::memcpy(&bytes[2 * i], &t.bytes[4 * i + 2], 2);  // little-endian high half
      }
      t.bytes = std::move(bytes);
      t.dtype = DType::kBF16;
    }
    absl::StatusOr<std::unique_ptr<DiffusionModel>> m = DiffusionModel::Create(c, w, options);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(RunAlone(m->get(), Spec({1}, 2, 2.0f, DiffusionSampler::kDdim, 0, 1)).pixels.size(),
              static_cast<size_t>(c.image_size * c.image_size * c.channels));
  }
}

// ---------------------------------------------------------------------------------------- CUDA

TEST(DiffusionModelTest, BatchedEqualsAloneAndMatchesCpu_CUDA) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const DiffusionConfig c = TinyConfig();
  std::unique_ptr<DiffusionModel> gpu = MakeModel(c, 21, 8, "cuda:0");
  std::unique_ptr<DiffusionModel> cpu = MakeModel(c, 21, 8, "cpu");
  ASSERT_NE(gpu, nullptr);
  ASSERT_NE(cpu, nullptr);
  EXPECT_EQ(gpu->device(), "cuda:0");
  const std::vector<ImageSampleSpec> specs = MixedSpecs(c.vocab_size);
  std::vector<SampleRun> alone;
  for (const ImageSampleSpec& s : specs) alone.push_back(RunAlone(gpu.get(), s));
  const std::vector<SampleRun> batched = RunInterleaved(gpu.get(), specs);
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_TRUE(SameBits(batched[i], alone[i])) << "spec " << i;
    // Same noise (drawn on the CPU), same arithmetic up to rounding: pixels agree closely.
    const std::vector<uint8_t> on_cpu = RunAlone(cpu.get(), specs[i]).pixels;
    ASSERT_EQ(on_cpu.size(), alone[i].pixels.size());
    int worst = 0;
    for (size_t p = 0; p < on_cpu.size(); ++p) {
      worst = std::max(worst, std::abs(int{on_cpu[p]} - int{alone[i].pixels[p]}));
    }
    EXPECT_LE(worst, 8) << "spec " << i;
  }
}

}  // namespace
}  // namespace tandem

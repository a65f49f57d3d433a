// End to end for images: an in-process Server serving a tiny seeded diffusion model beside a tiny
// LLM, driven over a real gRPC channel.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "models/formats/png.h"
#include "server/api/server.h"
#include "tandem/v1/inference.grpc.pb.h"
#include "tests/testing/test_model.h"

namespace tandem {
namespace {

using tandem::v1::Finished;
using tandem::v1::GenerateRequest;
using tandem::v1::GenerateResponse;

struct ImageResult {
  grpc::Status status;
  std::vector<int> steps;  // ImageProgress.step in arrival order
  int total = 0;
  int previews = 0;
  std::vector<std::string> pngs;
  bool finished_seen = false;
  Finished finished;
};

class ImageE2ETest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(testing::MakeTempDir("tandem-img-e2e"));
    testing::WriteTinyImageModel(*root_ + "/models/pixels");
    testing::WriteTinyModel(*root_ + "/models/tiny");
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*root_);
    delete root_;
  }

  void StartServer(int max_images = 16) {
    ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.metrics_listen = "";
    o.models_dir = *root_ + "/models";
    o.devices = {"cpu"};
    o.max_images_per_device = max_images;
    o.limits.max_images = 4;
    o.limits.max_steps = 50;
    auto server = Server::Create(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = tandem::v1::Inference::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", server_->port()), grpc::InsecureChannelCredentials()));
  }
  void SetUp() override { StartServer(); }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::Seconds(5));
  }

  static GenerateRequest ImageRequest(const std::string& caption, int steps, uint64_t seed,
                                      int n = 1) {
    GenerateRequest r;
    r.set_model("pixels");
    r.set_prompt(caption);
    r.mutable_image()->set_steps(steps);
    r.mutable_image()->set_seed(seed);
    r.mutable_image()->set_num_images(n);
    r.mutable_image()->set_guidance_scale(3.0f);
    return r;
  }

  // `on_progress` runs after each progress event (used to start a second request mid-way).
  ImageResult Run(const GenerateRequest& req,
                  const std::function<void(int)>& on_progress = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    ImageResult out;
    auto reader = stub_->Generate(&ctx, req);
    GenerateResponse resp;
    while (reader->Read(&resp)) {
      if (resp.has_progress()) {
        EXPECT_TRUE(out.pngs.empty()) << "progress after an image";
        out.steps.push_back(resp.progress().step());
        out.total = resp.progress().total();
        if (!resp.progress().preview_png().empty()) ++out.previews;
        if (on_progress) on_progress(resp.progress().step());
      } else if (resp.has_image()) {
        EXPECT_EQ(resp.image().index(), static_cast<int>(out.pngs.size()));
        EXPECT_EQ(resp.image().width(), 16);
        EXPECT_EQ(resp.image().height(), 16);
        out.pngs.push_back(resp.image().png());
      } else if (resp.has_finished()) {
        out.finished_seen = true;
        out.finished = resp.finished();
      }
    }
    out.status = reader->Finish();
    return out;
  }

  static std::string* root_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<tandem::v1::Inference::Stub> stub_;
};

std::string* ImageE2ETest::root_ = nullptr;

TEST_F(ImageE2ETest, StreamsEveryStepThenImagesThenFinished) {
  GenerateRequest req = ImageRequest("a photo of a sneaker", 6, 42, /*n=*/2);
  req.mutable_image()->set_preview_every(2);
  req.set_request_id("img-7");
  ImageResult r = Run(req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.steps, (std::vector<int>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(r.total, 6);
  EXPECT_EQ(r.previews, 2);  // steps 2 and 4 (the last step sends the images instead)
  ASSERT_EQ(r.pngs.size(), 2u);
  for (const std::string& png : r.pngs) {
    absl::StatusOr<RawImage> img = DecodePng(png);
    ASSERT_TRUE(img.ok()) << img.status();
    EXPECT_EQ(img->width, 16);
    EXPECT_EQ(img->height, 16);
    EXPECT_EQ(img->channels, 1);
  }
  EXPECT_NE(r.pngs[0], r.pngs[1]) << "image i uses seed + i";
  ASSERT_TRUE(r.finished_seen);
  EXPECT_EQ(r.finished.reason(), Finished::COMPLETE);
  EXPECT_EQ(r.finished.usage().images(), 2);
  EXPECT_EQ(r.finished.usage().steps(), 6);
  EXPECT_GT(r.finished.usage().prompt_tokens(), 1);
  EXPECT_EQ(r.finished.seed(), 42u);
  EXPECT_EQ(r.finished.request_id(), "img-7");
}

TEST_F(ImageE2ETest, SameSeedSameImageBitForBit) {
  ImageResult a = Run(ImageRequest("a dress", 5, 7));
  ImageResult b = Run(ImageRequest("a dress", 5, 7));
  ImageResult c = Run(ImageRequest("a dress", 5, 8));
  ASSERT_TRUE(a.status.ok() && b.status.ok() && c.status.ok());
  EXPECT_EQ(a.pngs, b.pngs);
  EXPECT_NE(a.pngs, c.pngs);
}

TEST_F(ImageE2ETest, RequestsBatchedAtDifferentStepsGiveTheSameImagesAsAlone) {
  for (auto sampler : {tandem::v1::SAMPLER_DDIM, tandem::v1::SAMPLER_DDPM}) {
    GenerateRequest long_req = ImageRequest("a black and white photo of a coat", 12, 100);
    GenerateRequest short_req = ImageRequest("a bag", 5, 200, /*n=*/2);
    short_req.mutable_image()->set_negative_prompt("a dark bag");
    long_req.mutable_image()->set_sampler(sampler);
    short_req.mutable_image()->set_sampler(sampler);
    ImageResult long_alone = Run(long_req);
    ImageResult short_alone = Run(short_req);
    ASSERT_TRUE(long_alone.status.ok() && short_alone.status.ok());

    // The short request arrives while the long one is at step 3; they then share every step.
    ImageResult short_batched;
    std::thread second;
    ImageResult long_batched = Run(long_req, [&](int step) {
      if (step == 3) second = std::thread([&] { short_batched = Run(short_req); });
    });
    if (second.joinable()) second.join();
    ASSERT_EQ(long_batched.steps.size(), 12u);
    ASSERT_TRUE(long_batched.status.ok() && short_batched.status.ok());
    EXPECT_EQ(long_batched.pngs, long_alone.pngs) << "sampler " << sampler;
    EXPECT_EQ(short_batched.pngs, short_alone.pngs) << "sampler " << sampler;
  }
}

TEST_F(ImageE2ETest, CancelLeavesBeforeTheNextStepAndFreesItsSamples) {
  StartServer(/*max_images=*/1);
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, ImageRequest("a coat", 50, 1));
  GenerateResponse resp;
  ASSERT_TRUE(reader->Read(&resp));
  ctx.TryCancel();
  int more = 0;
  while (reader->Read(&resp)) ++more;
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(more, 49);
  // With one sample slot, this only completes if the cancelled request gave its slot back.
  ImageResult next = Run(ImageRequest("a bag", 3, 2));
  EXPECT_TRUE(next.status.ok()) << next.status.error_message();
}

TEST_F(ImageE2ETest, BadInputIsRejectedWhileOthersContinue) {
  ImageResult background;
  std::thread bg([&] { background = Run(ImageRequest("a sandal", 20, 5)); });
  struct Case {
    const char* name;
    GenerateRequest req;
    const char* part;
  };
  std::vector<Case> cases;
  auto base = [] { return ImageRequest("a shirt", 5, 1); };
  {
    Case c{"zero steps", base(), "steps"};
    c.req.mutable_image()->set_steps(0);
    cases.push_back(c);
  }
  {
    Case c{"negative steps", base(), "steps"};
    c.req.mutable_image()->set_steps(-1);
    cases.push_back(c);
  }
  {
    Case c{"zero images", base(), "num_images"};
    c.req.mutable_image()->set_num_images(0);
    cases.push_back(c);
  }
  {
    Case c{"eta past 1", base(), "eta"};
    c.req.mutable_image()->set_eta(1.5f);
    cases.push_back(c);
  }
  {
    Case c{"steps past the limit", base(), "steps"};
    c.req.mutable_image()->set_steps(51);
    cases.push_back(c);
  }
  {
    Case c{"NaN guidance", base(), "guidance_scale"};
    c.req.mutable_image()->set_guidance_scale(std::numeric_limits<float>::quiet_NaN());
    cases.push_back(c);
  }
  {
    Case c{"negative guidance", base(), "guidance_scale"};
    c.req.mutable_image()->set_guidance_scale(-2);
    cases.push_back(c);
  }
  {
    Case c{"too many images", base(), "num_images"};
    c.req.mutable_image()->set_num_images(5);
    cases.push_back(c);
  }
  {
    Case c{"unknown sampler", base(), "unknown sampler"};
    c.req.mutable_image()->set_sampler(static_cast<tandem::v1::Sampler>(7));
    cases.push_back(c);
  }
  {
    Case c{"text params to an image model", base(), "image model"};
    c.req.mutable_text()->set_max_tokens(5);
    cases.push_back(c);
  }
  for (const Case& c : cases) {
    ImageResult r = Run(c.req);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << c.name << ": " << r.status.error_message();
    EXPECT_NE(r.status.error_message().find(c.part), std::string::npos)
        << c.name << ": " << r.status.error_message();
    EXPECT_TRUE(r.steps.empty()) << c.name;
  }
  bg.join();
  ASSERT_TRUE(background.status.ok()) << background.status.error_message();
  EXPECT_EQ(background.steps.size(), 20u);
  EXPECT_EQ(background.pngs.size(), 1u);
}

TEST_F(ImageE2ETest, TextStreamsKeepFlowingWhileImagesDenoise) {
  ImageResult image;
  std::thread t([&] { image = Run(ImageRequest("a pullover", 30, 3)); });
  GenerateRequest text;
  text.set_model("tiny");
  text.set_prompt("the cat");
  text.mutable_text()->set_max_tokens(40);
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, text);
  GenerateResponse resp;
  int deltas = 0;
  bool finished = false;
  while (reader->Read(&resp)) {
    deltas += resp.has_text();
    finished |= resp.has_finished();
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_TRUE(finished);
  EXPECT_GT(deltas, 0);
  t.join();
  EXPECT_TRUE(image.status.ok()) << image.status.error_message();
}

TEST_F(ImageE2ETest, ListModelsShowsBothKinds) {
  grpc::ClientContext ctx;
  tandem::v1::ListModelsResponse resp;
  ASSERT_TRUE(stub_->ListModels(&ctx, {}, &resp).ok());
  ASSERT_EQ(resp.models_size(), 2);
  const auto& img = resp.models(0);  // sorted by name: pixels, tiny
  EXPECT_EQ(img.name(), "pixels");
  EXPECT_EQ(img.kind(), tandem::v1::MODEL_KIND_IMAGE);
  EXPECT_EQ(img.image_size(), 16);
  EXPECT_TRUE(img.is_default());
  EXPECT_EQ(resp.models(1).kind(), tandem::v1::MODEL_KIND_TEXT);
  EXPECT_TRUE(resp.models(1).is_default());
}

TEST_F(ImageE2ETest, UnsetParamsTakeTheModelsDefaults) {
  GenerateRequest req;
  req.set_prompt("a sneaker");
  req.mutable_image()->set_seed(5);
  ImageResult r = Run(req);  // no model, no steps, no guidance, no num_images
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.finished.model(), "pixels");
  EXPECT_EQ(r.total, 10);  // the tiny model's default_steps
  EXPECT_EQ(r.pngs.size(), 1u);
}

TEST_F(ImageE2ETest, EmptyModelNameWithImageParamsUsesTheDefaultImageModel) {
  GenerateRequest req = ImageRequest("a bag", 2, 9);
  req.clear_model();
  ImageResult r = Run(req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.finished.model(), "pixels");
}

}  // namespace
}  // namespace tandem

// Placement: one policy for requests and jobs across devices, with training-memory budgets.
#include "server/core/placement.h"

#include "gtest/gtest.h"

namespace tandem {
namespace {

TEST(PlacementTest, RequestsGoToTheLeastLoadedDevicePreferringOneNotTraining) {
  Placement p({0, 0});
  EXPECT_EQ(p.PlaceRequest(), 0);
  EXPECT_EQ(p.PlaceRequest(), 1);
  EXPECT_EQ(p.PlaceJob("job-1", 100), 0);  // equal load: the first device
  // Equal request counts: the device without a job wins.
  EXPECT_EQ(p.PlaceRequest(), 1);
  EXPECT_EQ(p.PlaceRequest(), 0);
  EXPECT_EQ(p.total_requests(), 4);
  p.RequestEnded(1);
  p.RequestEnded(1);
  EXPECT_EQ(p.requests(1), 0);
  EXPECT_EQ(p.PlaceRequest(), 1);
}

TEST(PlacementTest, OneJobPerDeviceWithinItsBudget) {
  Placement p({1000, 4000});
  EXPECT_TRUE(p.CheckJobFits(4000).ok());
  absl::Status too_big = p.CheckJobFits(5000);
  EXPECT_EQ(too_big.code(), absl::StatusCode::kResourceExhausted);
  // A job that only fits the second device goes there.
  EXPECT_EQ(p.PlaceJob("big", 3000), 1);
  EXPECT_EQ(p.job(1), "big");
  // The next big job waits: the one device that holds it is busy.
  EXPECT_EQ(p.PlaceJob("big2", 3000), -1);
  // A small one takes the first device.
  EXPECT_EQ(p.PlaceJob("small", 500), 0);
  EXPECT_EQ(p.PlaceJob("small2", 500), -1);
  p.JobEnded(1);
  EXPECT_EQ(p.job(1), "");
  EXPECT_EQ(p.PlaceJob("big2", 3000), 1);
}

TEST(PlacementTest, JobsPreferTheDeviceServingLess) {
  Placement p({0, 0, 0});
  p.PlaceRequest();  // device 0
  p.PlaceRequest();  // device 1
  EXPECT_EQ(p.PlaceJob("a", 1), 2);
  EXPECT_EQ(p.PlaceJob("b", 1), 0);
}

}  // namespace
}  // namespace tandem

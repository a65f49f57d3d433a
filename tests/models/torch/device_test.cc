#include "models/torch/device.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace tandem {
namespace {

TEST(DeviceTest, Cpu) {
  auto devices = ResolveDevices("cpu");
  ASSERT_TRUE(devices.ok()) << devices.status();
  EXPECT_EQ(*devices, std::vector<std::string>{"cpu"});
  devices = ResolveDevices("  cpu ");
  ASSERT_TRUE(devices.ok()) << devices.status();
  EXPECT_EQ(*devices, std::vector<std::string>{"cpu"});
}

TEST(DeviceTest, Auto) {
  auto devices = ResolveDevices("auto");
  ASSERT_TRUE(devices.ok()) << devices.status();
  if (CudaDeviceCount() == 0) {
    EXPECT_EQ(*devices, std::vector<std::string>{"cpu"});
  } else {
    ASSERT_EQ(static_cast<int>(devices->size()), CudaDeviceCount());
    EXPECT_EQ((*devices)[0], "cuda:0");
  }
}

TEST(DeviceTest, CudaAbsentOrPresent) {
  const int count = CudaDeviceCount();
  auto devices = ResolveDevices("cuda:0");
  if (count == 0) {
    EXPECT_EQ(devices.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(devices.status().message().find("0 CUDA"), std::string::npos) << devices.status();
  } else {
    ASSERT_TRUE(devices.ok()) << devices.status();
    EXPECT_EQ(*devices, std::vector<std::string>{"cuda:0"});
  }
  const std::string beyond = "cuda:" + std::to_string(count);
  EXPECT_EQ(ResolveDevices(beyond).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(DeviceTest, Malformed) {
  for (const char* flag : {"gpu", "", ",", "cpu,", "cuda:", "cuda:x", "cuda:-1", "cuda0", "cpu,cpu",
                           " cpu , cpu", "auto,cpu", "CPU"}) {
    EXPECT_EQ(ResolveDevices(flag).status().code(), absl::StatusCode::kInvalidArgument)
        << "\"" << flag << "\"";
  }
  if (CudaDeviceCount() >= 1) {
    EXPECT_EQ(ResolveDevices("cuda:0, cuda:0").status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(DeviceTest, ComputeThreads) {
  EXPECT_EQ(SetComputeThreads(1), 1);
  EXPECT_GE(SetComputeThreads(0), 1);  // every core, which the other tests then run with
}

}  // namespace
}  // namespace tandem

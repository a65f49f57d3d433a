#include "models/formats/safetensors.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "tests/testing/base/files.h"
#include "tests/testing/base/matchers.h"

namespace tandem {
namespace {

using testing::Contains;
using testing::ListDir;
using testing::ReadAll;
using testing::WriteAll;

std::string U64Le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A file from a header JSON (padded as given) and a data section.
std::string Raw(const std::string& header, const std::string& data) {
  return U64Le(header.size()) + header + data;
}

TensorData Bytes(DType dtype, std::vector<int64_t> shape, std::string bytes) {
  TensorData t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.bytes = std::move(bytes);
  return t;
}

TEST(SafetensorsTest, DTypeNamesAndSizes) {
  struct Case {
    DType dtype;
    const char* name;
    int size;
  };
  for (const Case& k : {Case{DType::kF32, "F32", 4}, Case{DType::kF16, "F16", 2},
                        Case{DType::kBF16, "BF16", 2}, Case{DType::kF64, "F64", 8},
                        Case{DType::kI64, "I64", 8}, Case{DType::kI32, "I32", 4},
                        Case{DType::kI16, "I16", 2}, Case{DType::kI8, "I8", 1},
                        Case{DType::kU8, "U8", 1}, Case{DType::kBool, "BOOL", 1}}) {
    EXPECT_STREQ(DTypeName(k.dtype), k.name);
    EXPECT_EQ(DTypeSize(k.dtype), k.size) << k.name;
    absl::StatusOr<DType> back = DTypeFromName(k.name);
    ASSERT_TRUE(back.ok()) << k.name;
    EXPECT_EQ(*back, k.dtype);
  }
  EXPECT_FALSE(DTypeFromName("F8_E4M3").ok());
  EXPECT_FALSE(DTypeFromName("f32").ok());
}

TEST(SafetensorsTest, NumelAndF32) {
  const float values[6] = {1, 2, 3, 4, 5, 6};
  TensorData t = TensorData::F32({2, 3}, values);
  EXPECT_EQ(t.numel(), 6);
  ASSERT_EQ(t.bytes.size(), 24u);
  EXPECT_EQ(std::memcmp(t.bytes.data(), values, 24), 0);
  EXPECT_EQ(TensorData::F32({}, values).numel(), 1);  // 0-d scalar
  EXPECT_EQ(TensorData::F32({}, values).bytes.size(), 4u);
  EXPECT_EQ(TensorData::F32({0, 5}, nullptr).numel(), 0);
  EXPECT_TRUE(TensorData::F32({0, 5}, nullptr).bytes.empty());
}

// Hand-computed bytes: name order ("b" before "w"), metadata first, offsets relative to the
// data section, header padded with spaces to a multiple of 8.
TEST(SafetensorsTest, GoldenBytes) {
  SafetensorsFile file;
  file.metadata["format"] = "pt";
  const float w[2] = {1.0f, -2.0f};
  file.tensors["w"] = TensorData::F32({1, 2}, w);
  file.tensors["b"] = Bytes(DType::kI16, {}, std::string("\x02\x01", 2));  // scalar 0x0102

  const std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("b":{"dtype":"I16","shape":[],"data_offsets":[0,2]},)"
      R"("w":{"dtype":"F32","shape":[1,2],"data_offsets":[2,10]}})";
  ASSERT_EQ(header.size(), 140u);
  const std::string expected = std::string("\x90\0\0\0\0\0\0\0", 8) + header + "    " +
                               std::string("\x02\x01", 2) +
                               std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8);
  const std::string bytes = SerializeSafetensors(file);
  EXPECT_EQ(bytes, expected);

  // Without metadata there is no "__metadata__" key at all.
  SafetensorsFile plain;
  const float a[2] = {1.0f, 2.0f};
  plain.tensors["a"] = TensorData::F32({2}, a);
  const std::string plain_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  ASSERT_EQ(plain_header.size(), 54u);
  EXPECT_EQ(SerializeSafetensors(plain),
            U64Le(56) + plain_header + "  " +
                std::string("\x00\x00\x80\x3f\x00\x00\x00\x40", 8));
}

TEST(SafetensorsTest, RoundTripThroughFile) {
  const testing::TempDir tmp("safetensors_test");
  const std::string& dir = tmp.path();
  const std::string path = dir + "/model.safetensors";

  SafetensorsFile file;
  file.metadata["source"] = "unit test";
  file.metadata["step"] = "42";
  std::vector<float> big(3 * 5 * 7);
  for (size_t i = 0; i < big.size(); ++i) big[i] = 0.25f * static_cast<float>(i) - 3.0f;
  file.tensors["layers.0.attention.wq.weight"] = TensorData::F32({3, 5, 7}, big.data());
  const float pi = 3.14159f;
  file.tensors["scalar"] = TensorData::F32({}, &pi);
  file.tensors["empty"] = TensorData::F32({0, 4}, nullptr);
  file.tensors["bf16"] = Bytes(DType::kBF16, {2}, std::string("\x80\x3f\x00\xc0", 4));
  file.tensors["f16"] = Bytes(DType::kF16, {1}, std::string("\x00\x3c", 2));
  file.tensors["i64"] = Bytes(DType::kI64, {1}, std::string("\xff\xff\xff\xff\xff\xff\xff\xff", 8));
  file.tensors["f64"] = Bytes(DType::kF64, {1}, std::string("\0\0\0\0\0\0\xf0\x3f", 8));
  file.tensors["i32"] = Bytes(DType::kI32, {2, 1}, std::string("\1\0\0\0\2\0\0\0", 8));
  file.tensors["i8"] = Bytes(DType::kI8, {3}, "\x01\xff\x7f");
  file.tensors["u8"] = Bytes(DType::kU8, {1, 1, 1}, "\xaa");
  file.tensors["mask"] = Bytes(DType::kBool, {2}, std::string("\x01\x00", 2));
  file.tensors["i16"] = Bytes(DType::kI16, {0}, "");

  ASSERT_TRUE(WriteSafetensors(path, file).ok());
  // Only the final file remains: the temporary was renamed over it.
  EXPECT_EQ(ListDir(dir), std::vector<std::string>{"model.safetensors"});
  const std::string bytes = ReadAll(path);
  EXPECT_EQ(bytes, SerializeSafetensors(file));
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  EXPECT_EQ((8 + header_size) % 8, 0u);

  absl::StatusOr<SafetensorsFile> back = ReadSafetensors(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->metadata, file.metadata);
  ASSERT_EQ(back->tensors.size(), file.tensors.size());
  for (const auto& [name, t] : file.tensors) {
    auto it = back->tensors.find(name);
    ASSERT_NE(it, back->tensors.end()) << name;
    EXPECT_EQ(it->second.dtype, t.dtype) << name;
    EXPECT_EQ(it->second.shape, t.shape) << name;
    EXPECT_EQ(it->second.bytes, t.bytes) << name;
  }
  EXPECT_EQ(back->tensors["scalar"].numel(), 1);
  EXPECT_TRUE(back->tensors["scalar"].shape.empty());
  EXPECT_EQ(back->tensors["empty"].numel(), 0);

  // Overwriting replaces the file atomically, again leaving no temporary behind.
  SafetensorsFile small;
  small.tensors["x"] = TensorData::F32({}, &pi);
  ASSERT_TRUE(WriteSafetensors(path, small).ok());
  back = ReadSafetensors(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->tensors.size(), 1u);
  EXPECT_TRUE(back->metadata.empty());
  EXPECT_EQ(ListDir(dir), std::vector<std::string>{"model.safetensors"});
}

TEST(SafetensorsTest, EmptyFileOfTensors) {
  absl::StatusOr<SafetensorsFile> back = ParseSafetensors(SerializeSafetensors({}));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->tensors.empty());
}

TEST(SafetensorsTest, WriteRejectsInconsistentTensors) {
  const testing::TempDir tmp("safetensors_test");
  const std::string& dir = tmp.path();
  SafetensorsFile file;
  file.tensors["w"] = Bytes(DType::kF32, {2, 2}, std::string(12, '\0'));  // needs 16
  absl::Status s = WriteSafetensors(dir + "/bad.safetensors", file);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(s.message()), "\"w\""));

  file.tensors.clear();
  file.tensors["__metadata__"] = Bytes(DType::kU8, {}, "x");
  EXPECT_EQ(WriteSafetensors(dir + "/bad.safetensors", file).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ListDir(dir).empty());

  EXPECT_EQ(WriteSafetensors(dir + "/missing/sub/x.safetensors", {}).code(),
            absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  const testing::TempDir tmp("safetensors_test");
  absl::StatusOr<SafetensorsFile> f = ReadSafetensors(tmp / "nope.safetensors");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(std::string(f.status().message()), "nope.safetensors"));
}

void ExpectDataLoss(const std::string& bytes, const std::string& message) {
  absl::StatusOr<SafetensorsFile> f = ParseSafetensors(bytes);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss) << message;
  EXPECT_TRUE(Contains(std::string(f.status().message()), message));
}

TEST(SafetensorsTest, RejectsMalformedFiles) {
  const std::string good_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data(8, '\x01');
  ASSERT_TRUE(ParseSafetensors(Raw(good_header, data)).ok());

  ExpectDataLoss("", "too short");
  ExpectDataLoss(std::string("\x05\0\0", 3), "too short");
  // Header length past the end of the file.
  ExpectDataLoss(U64Le(1000) + good_header, "header length 1000");
  ExpectDataLoss(U64Le(~0ull) + good_header, "runs past the end");
  // Truncated data section.
  ExpectDataLoss(Raw(good_header, data.substr(0, 5)), "run past");
  // Trailing bytes nobody owns.
  ExpectDataLoss(Raw(good_header, data + "xx"), "cover");
  ExpectDataLoss(Raw("{\"a\":", data), "not valid JSON");
  ExpectDataLoss(Raw("[1,2,3]", ""), "not a JSON object");
  ExpectDataLoss(Raw(R"({"a":{"dtype":"F9","shape":[2],"data_offsets":[0,8]}})", data), "F9");
  ExpectDataLoss(Raw(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", data), "dtype");
  ExpectDataLoss(Raw(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data),
                 "negative dimension");
  ExpectDataLoss(Raw(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", data),
                 "dimension");
  ExpectDataLoss(Raw(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", data), "shape");
  ExpectDataLoss(Raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data),
                 "data_offsets");
  ExpectDataLoss(Raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", data),
                 "end before begin");
  // Offsets that disagree with shape * dtype size.
  ExpectDataLoss(Raw(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data),
                 "needs 12 bytes");
  ExpectDataLoss(Raw(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],)"
                     R"("data_offsets":[0,8]}})",
                     data),
                 "overflowing shape");
  // Overlapping tensors.
  ExpectDataLoss(Raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                     data),
                 "overlap");
  // A gap between tensors.
  ExpectDataLoss(Raw(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                     R"("b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}})",
                     data),
                 "belong to no tensor");
  ExpectDataLoss(Raw(R"({"__metadata__":{"k":1}})", ""), "not a string");
  ExpectDataLoss(Raw(R"({"__metadata__":[]})", ""), "__metadata__");
}

TEST(SafetensorsTest, ReadReportsCorruptFilesWithPath) {
  const testing::TempDir tmp("safetensors_test");
  const std::string& dir = tmp.path();
  const std::string path = dir + "/trunc.safetensors";
  SafetensorsFile file;
  const float v[4] = {1, 2, 3, 4};
  file.tensors["v"] = TensorData::F32({4}, v);
  std::string bytes = SerializeSafetensors(file);
  WriteAll(path, bytes.substr(0, bytes.size() - 3));
  absl::StatusOr<SafetensorsFile> f = ReadSafetensors(path);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(f.status().message()), path));

  // Header length past the end of the file, and a file too short for the length itself.
  WriteAll(path, bytes.substr(0, 40));
  f = ReadSafetensors(path);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(f.status().message()), "runs past the end of the 40-byte file"));
  WriteAll(path, "abc");
  f = ReadSafetensors(path);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(std::string(f.status().message()), "too short"));

  // A folder is not a safetensors file.
  EXPECT_FALSE(ReadSafetensors(dir).ok());
}

TEST(SafetensorsTest, AcceptsUnpaddedHeadersAndZeroSizeTensorsAnywhere) {
  // Other writers may skip the padding; zero-size tensors may sit at any covered offset.
  const std::string header =
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
      R"("e":{"dtype":"F32","shape":[0],"data_offsets":[2,2]},)"
      R"("z":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}})";
  absl::StatusOr<SafetensorsFile> f = ParseSafetensors(Raw(header, "abc"));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->tensors["a"].bytes, "ab");
  EXPECT_EQ(f->tensors["e"].bytes, "");
  EXPECT_EQ(f->tensors["z"].bytes, "c");
}

}  // namespace
}  // namespace tandem

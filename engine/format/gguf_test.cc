#include "engine/format/gguf.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "nlohmann/json.hpp"
#include "engine/format/float16.h"
#include "engine/format/gguf_test_util.h"

namespace quantd::model {
namespace {

using testing::F32Bytes;
using testing::GgufBuilder;
using VT = GgufValueType;

std::string TestdataPath(const std::string& name) {
  const char* src = std::getenv("QUANTD_SOURCE_DIR");
  return std::string(src != nullptr ? src : QUANTD_TEST_SOURCE_DIR) + "/engine/format/testdata/" +
         name;
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Random quantized blocks with finite scales: `bytes_per_block` bytes per 32 elements, the
// first `n_scales` f16 fields hold scales drawn from [-2, 2].
std::string RandomBlocks(std::mt19937* rng, int blocks, int bytes_per_block, int n_scales) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-2.0f, 2.0f);
  std::string s;
  for (int b = 0; b < blocks; ++b) {
    for (int k = 0; k < n_scales; ++k) GgufBuilder::Put<uint16_t>(&s, FloatToHalf(scale(*rng)));
    for (int k = 2 * n_scales; k < bytes_per_block; ++k) s.push_back(static_cast<char>(byte(*rng)));
  }
  return s;
}

float HalfAt(const std::string& s, size_t off) {
  uint16_t h;
  std::memcpy(&h, s.data() + off, 2);
  return HalfToFloat(h);
}

// Naive per-element reference decoders written from the format description.
float RefQ8_0(const std::string& s, int i) {
  const size_t blk = static_cast<size_t>(i / 32) * 34;
  return HalfAt(s, blk) * static_cast<float>(static_cast<int8_t>(s[blk + 2 + i % 32]));
}
int Nibble(const std::string& s, size_t qs, int j) {
  const auto byte = static_cast<unsigned char>(s[qs + j % 16]);
  return j < 16 ? (byte & 15) : (byte >> 4);
}
float RefQ4_0(const std::string& s, int i) {
  const size_t blk = static_cast<size_t>(i / 32) * 18;
  return HalfAt(s, blk) * static_cast<float>(Nibble(s, blk + 2, i % 32) - 8);
}
float RefQ4_1(const std::string& s, int i) {
  const size_t blk = static_cast<size_t>(i / 32) * 20;
  return HalfAt(s, blk) * static_cast<float>(Nibble(s, blk + 4, i % 32)) + HalfAt(s, blk + 2);
}

TEST(GgufTest, ParsesEveryMetadataType) {
  GgufBuilder b;
  b.Scalar<uint8_t>("u8", VT::kU8, 250)
      .Scalar<int8_t>("i8", VT::kI8, -7)
      .Scalar<uint16_t>("u16", VT::kU16, 65000)
      .Scalar<int16_t>("i16", VT::kI16, -32000)
      .Scalar<uint32_t>("u32", VT::kU32, 4000000000u)
      .Scalar<int32_t>("i32", VT::kI32, -2000000000)
      .Scalar<float>("f32", VT::kF32, 0.25f)
      .Scalar<uint8_t>("bool", VT::kBool, 1)
      .String("str", "h\xc3\xa9llo")
      .Scalar<uint64_t>("u64", VT::kU64, 18000000000000000000ull)
      .Scalar<int64_t>("i64", VT::kI64, -9000000000000000000ll)
      .Scalar<double>("f64", VT::kF64, 1e300)
      .Array<uint8_t>("a.u8", VT::kU8, {1, 2, 255})
      .Array<int8_t>("a.i8", VT::kI8, {-128, 127})
      .Array<uint16_t>("a.u16", VT::kU16, {7})
      .Array<int16_t>("a.i16", VT::kI16, {-1, -2})
      .Array<uint32_t>("a.u32", VT::kU32, {})
      .Array<int32_t>("a.i32", VT::kI32, {3, -4, 5})
      .Array<float>("a.f32", VT::kF32, {1.5f, -2.5f})
      .Array<uint8_t>("a.bool", VT::kBool, {0, 1, 1})
      .Array<uint64_t>("a.u64", VT::kU64, {1ull << 40})
      .Array<int64_t>("a.i64", VT::kI64, {-(1ll << 40)})
      .Array<double>("a.f64", VT::kF64, {0.1})
      .StringArray("a.str", {"x", "", "\xc4\xa0the"});
  const std::string img = b.Build();
  auto f = GgufFile::Parse(img, "mem.gguf");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->version(), 3u);
  EXPECT_EQ((*f)->metadata().size(), 24u);
  EXPECT_EQ(*(*f)->GetInt("u8"), 250);
  EXPECT_EQ(*(*f)->GetInt("i8"), -7);
  EXPECT_EQ(*(*f)->GetInt("u16"), 65000);
  EXPECT_EQ(*(*f)->GetInt("i16"), -32000);
  EXPECT_EQ(*(*f)->GetInt("u32"), 4000000000ll);
  EXPECT_EQ(*(*f)->GetInt("i32"), -2000000000);
  EXPECT_EQ(*(*f)->GetFloat("f32"), 0.25);
  EXPECT_EQ(*(*f)->GetBool("bool"), true);
  EXPECT_EQ(*(*f)->GetString("str"), "h\xc3\xa9llo");
  EXPECT_EQ((*f)->GetInt("u64").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(static_cast<uint64_t>((*f)->Find("u64")->ints[0]), 18000000000000000000ull);
  EXPECT_EQ(*(*f)->GetInt("i64"), -9000000000000000000ll);
  EXPECT_EQ(*(*f)->GetFloat("f64"), 1e300);
  EXPECT_EQ((*f)->Find("a.u8")->ints, (std::vector<int64_t>{1, 2, 255}));
  EXPECT_EQ((*f)->Find("a.i8")->ints, (std::vector<int64_t>{-128, 127}));
  EXPECT_EQ((*f)->Find("a.u16")->ints, (std::vector<int64_t>{7}));
  EXPECT_EQ((*f)->Find("a.i16")->ints, (std::vector<int64_t>{-1, -2}));
  EXPECT_TRUE((*f)->Find("a.u32")->is_array);
  EXPECT_EQ((*f)->Find("a.u32")->size(), 0u);
  EXPECT_EQ((*f)->Find("a.u32")->type, VT::kU32);
  EXPECT_EQ((*f)->Find("a.i32")->ints, (std::vector<int64_t>{3, -4, 5}));
  EXPECT_EQ((*f)->Find("a.f32")->floats, (std::vector<double>{1.5, -2.5}));
  EXPECT_EQ((*f)->Find("a.bool")->ints, (std::vector<int64_t>{0, 1, 1}));
  EXPECT_EQ((*f)->Find("a.u64")->ints, (std::vector<int64_t>{1ll << 40}));
  EXPECT_EQ((*f)->Find("a.i64")->ints, (std::vector<int64_t>{-(1ll << 40)}));
  EXPECT_EQ((*f)->Find("a.f64")->floats, (std::vector<double>{0.1}));
  EXPECT_EQ((*f)->Find("a.str")->strings, (std::vector<std::string>{"x", "", "\xc4\xa0the"}));
  // Typed getters name the key on misuse.
  auto wrong = (*f)->GetString("u8");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("\"u8\" is u8, expected a string"), std::string::npos)
      << wrong.status();
  EXPECT_EQ((*f)->GetInt("a.i32").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*f)->GetInt("missing").status().code(), absl::StatusCode::kNotFound);
}

TEST(GgufTest, DequantizesEveryTensorTypeLikeTheNaiveReference) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-3, 3);
  std::vector<float> f32(6 * 5);
  for (float& x : f32) x = u(rng);
  std::string f16, bf16;
  std::vector<float> f16_ref, bf16_ref;
  for (int i = 0; i < 40; ++i) {
    const float x = u(rng);
    GgufBuilder::Put<uint16_t>(&f16, FloatToHalf(x));
    GgufBuilder::Put<uint16_t>(&bf16, FloatToBFloat16(x));
    f16_ref.push_back(HalfToFloat(FloatToHalf(x)));
    bf16_ref.push_back(BFloat16ToFloat(FloatToBFloat16(x)));
  }
  const std::string q8 = RandomBlocks(&rng, 6, 34, 1);
  const std::string q40 = RandomBlocks(&rng, 4, 18, 1);
  const std::string q41 = RandomBlocks(&rng, 3, 20, 2);
  GgufBuilder b;
  b.Scalar<uint32_t>("general.alignment", VT::kU32, 64)
      .Tensor("f32", {6, 5}, 0, F32Bytes(f32))
      .Tensor("f16", {4, 5, 2}, 1, f16)
      .Tensor("bf16", {40}, 30, bf16)
      .Tensor("q8_0", {64, 3}, 8, q8)
      .Tensor("q4_0", {32, 2, 2}, 2, q40)
      .Tensor("q4_1", {96}, 3, q41);
  const std::string img = b.Build(64);
  auto f = GgufFile::Parse(img);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->alignment(), 64u);
  ASSERT_EQ((*f)->tensors().size(), 6u);
  for (const auto& t : (*f)->tensors()) EXPECT_EQ(t.offset % 64, 0u) << t.name;

  auto check = [&](const std::string& name, int64_t n, auto ref) {
    const GgufTensorInfo* t = (*f)->FindTensor(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->nelements, n);
    auto v = (*f)->Dequantize(*t);
    ASSERT_TRUE(v.ok()) << v.status();
    ASSERT_EQ(static_cast<int64_t>(v->size()), n);
    for (int i = 0; i < n; ++i) {
      ASSERT_EQ(Bits((*v)[i]), Bits(ref(i))) << name << " element " << i;
    }
  };
  check("f32", 30, [&](int i) { return f32[i]; });
  check("f16", 40, [&](int i) { return f16_ref[i]; });
  check("bf16", 40, [&](int i) { return bf16_ref[i]; });
  check("q8_0", 192, [&](int i) { return RefQ8_0(q8, i); });
  check("q4_0", 128, [&](int i) { return RefQ4_0(q40, i); });
  check("q4_1", 96, [&](int i) { return RefQ4_1(q41, i); });
  EXPECT_EQ((*f)->FindTensor("q4_0")->ne, (std::vector<int64_t>{32, 2, 2}));
  EXPECT_EQ((*f)->FindTensor("nope"), nullptr);
}

// Independent reference: a file written and decoded by llama.cpp's gguf-py
// (tests/fixtures/make_gguf_fixture.py).
TEST(GgufTest, MatchesGgufPyFixture) {
  auto f = GgufFile::Open(TestdataPath("gguf_fixture.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  auto text = ReadFile(TestdataPath("gguf_fixture.json"));
  ASSERT_TRUE(text.ok()) << text.status();
  const nlohmann::json ref = nlohmann::json::parse(*text);
  auto values = ReadFile(TestdataPath("gguf_fixture_values.f32"));
  ASSERT_TRUE(values.ok()) << values.status();

  ASSERT_EQ((*f)->metadata().size(), ref["metadata"].size());
  for (const auto& [key, m] : ref["metadata"].items()) {
    const GgufValue* v = (*f)->Find(key);
    ASSERT_NE(v, nullptr) << key;
    const auto& types = m["type"];
    EXPECT_EQ(v->is_array, types[0] == "ARRAY") << key;
    const nlohmann::json vals = v->is_array ? m["value"] : nlohmann::json::array({m["value"]});
    ASSERT_EQ(v->size(), vals.size()) << key;
    for (size_t i = 0; i < vals.size(); ++i) {
      const nlohmann::json& x = vals[i];
      if (x.is_string()) {
        EXPECT_EQ(v->strings.at(i), x.get<std::string>()) << key;
      } else if (x.is_boolean()) {
        EXPECT_EQ(v->ints.at(i), x.get<bool>() ? 1 : 0) << key;
      } else if (x.is_number_float()) {
        EXPECT_EQ(v->floats.at(i), x.get<double>()) << key;
      } else if (x.is_number_unsigned()) {
        EXPECT_EQ(static_cast<uint64_t>(v->ints.at(i)), x.get<uint64_t>()) << key;
      } else {
        EXPECT_EQ(v->ints.at(i), x.get<int64_t>()) << key;
      }
    }
  }

  ASSERT_EQ((*f)->tensors().size(), ref["tensors"].size());
  int checked = 0;
  for (const auto& t : ref["tensors"]) {
    const std::string name = t["name"];
    const GgufTensorInfo* info = (*f)->FindTensor(name);
    ASSERT_NE(info, nullptr) << name;
    EXPECT_EQ(GgmlTypeName(static_cast<uint32_t>(info->type)), t["type"].get<std::string>());
    EXPECT_EQ(info->ne, t["ne"].get<std::vector<int64_t>>()) << name;
    auto v = (*f)->Dequantize(*info);
    ASSERT_TRUE(v.ok()) << v.status();
    const size_t off = t["value_offset"], count = t["count"];
    ASSERT_EQ(v->size(), count);
    ASSERT_LE((off + count) * 4, values->size());
    const bool exact = t["type"] == "F32" || t["type"] == "F16" || t["type"] == "BF16";
    for (size_t i = 0; i < count; ++i) {
      float want;
      std::memcpy(&want, values->data() + (off + i) * 4, 4);
      if (exact) {
        ASSERT_EQ(Bits((*v)[i]), Bits(want)) << name << "[" << i << "]";
      } else {  // numpy may order the float ops differently: allow 1 ulp.
        ASSERT_LE(std::fabs((*v)[i] - want), std::fabs(want) * 1.2e-7f + 1e-30f)
            << name << "[" << i << "] " << (*v)[i] << " vs " << want;
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 600);
}

TEST(GgufTest, OpenReportsMissingFile) {
  auto f = GgufFile::Open("/nonexistent/x.gguf");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
}

// A small valid image used by the malformed-input tests.
std::string SmallValid() {
  std::mt19937 rng(3);
  GgufBuilder b;
  b.String("general.architecture", "llama")
      .StringArray("tokens", {"a", "bc"})
      .Scalar<uint32_t>("n", VT::kU32, 5)
      .Tensor("w", {32, 2}, 8, RandomBlocks(&rng, 2, 34, 1))
      .Tensor("n", {4}, 0, F32Bytes({1, 2, 3, 4}));
  return b.Build();
}

void ExpectInvalid(const std::string& img, const std::string& needle) {
  auto f = GgufFile::Parse(img, "bad.gguf");
  ASSERT_FALSE(f.ok()) << "accepted; expected error with: " << needle;
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
  EXPECT_NE(f.status().message().find("bad.gguf: "), std::string::npos) << f.status();
  EXPECT_NE(f.status().message().find(needle), std::string::npos) << f.status();
}

TEST(GgufTest, EveryTruncationIsAnError) {
  const std::string img = SmallValid();
  ASSERT_TRUE(GgufFile::Parse(img).ok());
  for (size_t cut = 0; cut < img.size(); ++cut) {
    auto f = GgufFile::Parse(std::string_view(img).substr(0, cut), "cut.gguf");
    ASSERT_FALSE(f.ok()) << "cut at " << cut;
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(GgufTest, RejectsBadHeaders) {
  std::string img = SmallValid();
  std::string m = img;
  m[0] = 'X';
  ExpectInvalid(m, "bad magic");
  for (uint32_t v : {1u, 4u, 0x03000000u}) {
    m = img;
    std::memcpy(&m[4], &v, 4);
    ExpectInvalid(m, "unsupported version");
  }
  m = img;
  const uint64_t huge = 1ull << 60;
  std::memcpy(&m[8], &huge, 8);
  ExpectInvalid(m, "tensor count 1152921504606846976 exceeds");
  m = img;
  std::memcpy(&m[16], &huge, 8);
  ExpectInvalid(m, "metadata count 1152921504606846976 exceeds");
  m = img;
  const uint64_t huge_len = ~0ull;
  std::memcpy(&m[24], &huge_len, 8);  // length of the first key
  ExpectInvalid(m, "metadata key #0");
}

TEST(GgufTest, RejectsBadMetadata) {
  auto one = [](GgufBuilder b) { return b.Build(); };
  // A metadata entry written by hand: the key, the value type tag `type`, then `rest`.
  auto raw_kv = [](const std::string& key, uint32_t type, const std::string& rest) {
    std::string raw;
    GgufBuilder::PutStr(&raw, key);
    GgufBuilder::Put<uint32_t>(&raw, type);
    return GgufBuilder().RawKv(raw + rest).Build();
  };
  auto le = [](auto v) {
    std::string s;
    GgufBuilder::Put(&s, v);
    return s;
  };
  ExpectInvalid(raw_kv("arr", 9, le(uint32_t{8}) + le(uint64_t{1} << 62)),
                "metadata \"arr\": array length 4611686018427387904");
  ExpectInvalid(raw_kv("nest", 9, le(uint32_t{9})), "arrays of arrays");
  ExpectInvalid(raw_kv("weird", 13, ""), "metadata \"weird\": unknown value type 13");
  ExpectInvalid(raw_kv("s", 8, le(uint64_t{1000}) + "short"), "reading metadata \"s\"");
  ExpectInvalid(one(GgufBuilder().Scalar<uint8_t>("b", VT::kBool, 2)), "bool value 2");
  ExpectInvalid(one(GgufBuilder().String("k", "a").String("k", "b")), "\"k\": duplicate key");
  ExpectInvalid(one(GgufBuilder().String("", "a")), "metadata key #0 is empty");
  ExpectInvalid(one(GgufBuilder().Scalar<uint32_t>("general.alignment", VT::kU32, 48)),
                "general.alignment = 48");
  ExpectInvalid(one(GgufBuilder().Scalar<uint32_t>("general.alignment", VT::kU32, 0)),
                "general.alignment = 0");
  ExpectInvalid(one(GgufBuilder().String("general.alignment", "32")),
                "general.alignment must be a u32");
}

TEST(GgufTest, RejectsBadTensors) {
  const std::string f4 = F32Bytes({1, 2, 3, 4});
  ExpectInvalid(GgufBuilder().Tensor("t", {1, 1, 1, 1, 4}, 0, f4).Build(), "n_dims 5");
  ExpectInvalid(GgufBuilder().Tensor("t", {}, 0, f4).Build(), "n_dims 0");
  ExpectInvalid(GgufBuilder().Tensor("t", {-4}, 0, f4).Build(), "ne[0] = -4 is negative");
  ExpectInvalid(GgufBuilder().Tensor("t", {1ll << 40, 1ll << 40}, 0, f4).Build(), "overflows");
  ExpectInvalid(GgufBuilder().Tensor("t", {1ll << 40}, 0, f4).Build(), "more than the file");
  ExpectInvalid(GgufBuilder().Tensor("t", {256}, 12, f4).Build(),
                "unsupported tensor type Q4_K (12)");
  ExpectInvalid(GgufBuilder().Tensor("t", {4}, 200, f4).Build(), "unknown (200)");
  ExpectInvalid(GgufBuilder().Tensor("t", {16}, 8, std::string(17, 'a')).Build(),
                "ne[0] = 16 is not a multiple of the Q8_0 block size 32");
  ExpectInvalid(GgufBuilder().Tensor("t", {4}, 0, f4, 4).Build(),
                "offset 4 is not a multiple of the alignment 32");
  ExpectInvalid(GgufBuilder().Tensor("t", {4}, 0, f4, 32).Build(), "outside the data section");
  ExpectInvalid(GgufBuilder().Tensor("t", {8}, 0, f4).Build(), "outside the data section");
  ExpectInvalid(GgufBuilder().Tensor("t", {4}, 0, f4).Tensor("t", {4}, 0, f4).Build(),
                "\"t\": duplicate tensor name");
  ExpectInvalid(GgufBuilder().Tensor("a", {4}, 0, f4 + f4 + f4, 0).Tensor("b", {4}, 0, f4, 0).Build(),
                "overlap");
  ExpectInvalid(GgufBuilder().Tensor("", {4}, 0, f4).Build(), "empty name");
}

// Random byte corruptions of a valid file must either parse or fail cleanly.
TEST(GgufTest, SurvivesRandomCorruption) {
  const std::string img = SmallValid();
  std::mt19937 rng(11);
  std::uniform_int_distribution<size_t> pos(0, img.size() - 1);
  std::uniform_int_distribution<int> byte(0, 255);
  int rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string m = img;
    const int flips = 1 + iter % 4;
    for (int k = 0; k < flips; ++k) m[pos(rng)] = static_cast<char>(byte(rng));
    auto f = GgufFile::Parse(m);
    if (!f.ok()) {
      ++rejected;
      continue;
    }
    for (const auto& t : (*f)->tensors()) ASSERT_TRUE((*f)->Dequantize(t).ok());
  }
  EXPECT_GT(rejected, 100);
}

}  // namespace
}  // namespace quantd::model

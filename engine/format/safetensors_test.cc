#include "engine/format/safetensors.h"

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "engine/format/checkpoint.h"
#include "engine/format/float16.h"
#include "engine/model/test_util.h"

namespace quantd::model {
namespace {

std::string Tmp(const std::string& name) { return ::testing::TempDir() + "/" + name; }

// A file with the given JSON header (space-padded to 8) and data bytes.
std::string Build(std::string header, const std::string& data) {
  while (header.size() % 8) header += ' ';
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// The header of one tensor "t": {"dtype": DTYPE, "shape": SHAPE, "data_offsets": OFFSETS}, the
// last two as JSON text.
std::string OneTensor(const std::string& dtype, const std::string& shape,
                      const std::string& offsets) {
  return R"({"t":{"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":)" + offsets +
         "}}";
}

absl::Status OpenBytes(const std::string& name, const std::string& bytes) {
  const std::string path = Tmp(name);
  EXPECT_TRUE(WriteFileAtomic(path, bytes).ok());
  return SafetensorsFile::Open(path).status();
}

void ExpectRejected(const std::string& name, const std::string& bytes, const std::string& needle) {
  absl::Status s = OpenBytes(name, bytes);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << name << ": " << s;
  EXPECT_NE(s.message().find(needle), absl::string_view::npos) << name << ": " << s;
  EXPECT_NE(s.message().find(name), absl::string_view::npos) << "message must name the file: " << s;
}

TEST(SafetensorsTest, RoundTripsAllDtypes) {
  std::vector<TensorToWrite> t;
  std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 7.0f};
  t.push_back({"b.f32", DType::kF32, {2, 3}, std::string(reinterpret_cast<char*>(f32.data()), 24)});
  std::string f16, bf16;
  for (float v : f32) {
    uint16_t h = FloatToHalf(v), b = FloatToBFloat16(v);
    f16.append(reinterpret_cast<char*>(&h), 2);
    bf16.append(reinterpret_cast<char*>(&b), 2);
  }
  t.push_back({"a.f16", DType::kF16, {6}, f16});
  t.push_back({"c.bf16", DType::kBF16, {3, 2}, bf16});
  std::vector<int32_t> i32 = {-1, 2, 1 << 30};
  t.push_back({"d.i32", DType::kI32, {3}, std::string(reinterpret_cast<char*>(i32.data()), 12)});
  t.push_back({"e.u8", DType::kU8, {3}, "xyz"});
  t.push_back({"f.empty", DType::kI64, {0, 4}, ""});
  const std::string path = Tmp("rt.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, t, {{"quantd", "yes"}}).ok());

  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->Names(), (std::vector<std::string>{"a.f16", "b.f32", "c.bf16", "d.i32", "e.u8",
                                                     "f.empty"}));
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  EXPECT_EQ((*f)->metadata().at("quantd"), "yes");
  for (const auto& w : t) {
    auto v = (*f)->Get(w.name);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(v->dtype, w.dtype);
    EXPECT_EQ(v->shape, w.shape);
    EXPECT_EQ(std::string(v->data), w.data) << w.name;
  }
  EXPECT_EQ((*f)->Get("nope").status().code(), absl::StatusCode::kNotFound);

  // Header is 8-byte aligned.
  auto bytes = ReadFile(path);
  uint64_t n;
  std::memcpy(&n, bytes->data(), 8);
  EXPECT_EQ(n % 8, 0u);

  // Float conversions through Checkpoint::ReadMatrix.
  auto ck = Checkpoint::Open(path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  auto m16 = (*ck)->ReadMatrix("a.f16");
  auto mbf = (*ck)->ReadMatrix("c.bf16");
  ASSERT_TRUE(m16.ok() && mbf.ok());
  EXPECT_EQ(m16->rows(), 1);
  EXPECT_EQ(mbf->rows(), 3);
  for (int i = 0; i < 6; ++i) {
    EXPECT_NEAR(m16->data()[i], f32[i], 1e-3 * std::abs(f32[i]) + 1e-7);
    EXPECT_NEAR(mbf->data()[i], f32[i], 1e-2 * std::abs(f32[i]));
  }
  EXPECT_EQ((*ck)->ReadMatrix("d.i32").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, HalfConversionsAreExact) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(FloatToHalf(f), h) << h;
    const float b = BFloat16ToFloat(static_cast<uint16_t>(h));
    if (!std::isnan(b)) EXPECT_EQ(FloatToBFloat16(b), h) << h;
  }
  // Ties round to even.
  EXPECT_EQ(FloatToBFloat16(1.0f + std::ldexp(1.0f, -8)), FloatToBFloat16(1.0f));
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), FloatToHalf(1.0f));
  EXPECT_EQ(FloatToHalf(1e6f), 0x7c00);
}

TEST(SafetensorsTest, WriterRejectsBadTensors) {
  EXPECT_EQ(WriteSafetensors(Tmp("w1"), {{"x", DType::kF32, {2}, "abc"}}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(Tmp("w2"), {{"x", DType::kU8, {1}, "a"}, {"x", DType::kU8, {1}, "b"}})
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSafetensors(Tmp("w3"), {{"x", DType::kU8, {-1}, ""}}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, RejectsMalformedFiles) {
  const std::string x8(8, 'x');
  const std::string ok_entry = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  ASSERT_TRUE(OpenBytes("good", Build("{" + ok_entry + "}", x8)).ok());

  ExpectRejected("tiny", "abc", "truncated");
  ExpectRejected("hdr_len", Build("{}", "").replace(0, 8, std::string("\xff\xff\0\0\0\0\0\0", 8)),
                 "exceeds the file");
  ExpectRejected("huge_len", std::string(8, '\xff') + "{}", "exceeds the file");
  ExpectRejected("bad_json", Build("{\"t\":", ""), "not valid JSON");
  ExpectRejected("not_obj", Build("[1,2]", ""), "not a JSON object");
  ExpectRejected("dtype", Build(OneTensor("F8", "[1]", "[0,1]"), "x"), "F8");
  ExpectRejected("size", Build(OneTensor("F32", "[3]", "[0,8]"), x8), "needs 12 bytes");
  ExpectRejected("out_of_file", Build(OneTensor("F32", "[2]", "[0,8]"), "1234"),
                 "outside the data section");
  ExpectRejected("overlap",
                 Build("{" + ok_entry + R"(,"u":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", x8),
                 "overlap");
  ExpectRejected("neg_dim", Build(OneTensor("F32", "[-2]", "[0,8]"), x8), "bad dimension -2");
  ExpectRejected("float_dim", Build(OneTensor("F32", "[2.5]", "[0,8]"), x8), "bad dimension");
  ExpectRejected("overflow", Build(OneTensor("F32", "[4294967296,4294967296]", "[0,8]"), x8),
                 "overflows");
  ExpectRejected("reversed", Build(OneTensor("U8", "[0]", "[8,4]"), x8), "data_offsets");
  ExpectRejected("offsets_type", Build(OneTensor("U8", "[1]", R"("0-1")"), "x"), "data_offsets");
  ExpectRejected("meta", Build(R"({"__metadata__":{"a":1}})", ""), "__metadata__");
  ExpectRejected("extra_key",
                 Build(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}})", "x"),
                 "unknown key");
  EXPECT_EQ(SafetensorsFile::Open(Tmp("absent")).status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, OpensExampleModel) {
  auto f = SafetensorsFile::Open(testing::ExamplePath("stories260K/model.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->Names().size(), 1u + 5 * 9 + 1);
  auto e = (*f)->Get("model.embed_tokens.weight");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->shape, (std::vector<int64_t>{512, 64}));
}

// The streaming writer: tensors declared in a non-sorted order arrive one at a time; the file
// reads back like WriteSafetensors' (same header), and a writer that does not finish leaves
// nothing behind.
TEST(SafetensorsTest, StreamingWriterRoundTripsInDeclarationOrder) {
  const std::string path = Tmp("stream.safetensors");
  RemoveAll(path).IgnoreError();  // a previous run's
  std::vector<TensorDecl> decls = {{"L10.sum", DType::kF64, {2}},
                                   {"L2.sum", DType::kU8, {3}},
                                   {"L2.tokens", DType::kI64, {1}}};
  auto w = SafetensorsWriter::Create(path, decls);
  ASSERT_TRUE(w.ok()) << w.status();
  const double d[2] = {1.5, -2.0};
  const int64_t n = 7;
  EXPECT_EQ((*w)->Append("L2.sum", "abc").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*w)->Append("L10.sum", "abc").code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*w)->Append("L10.sum", std::string_view(reinterpret_cast<const char*>(d), 16)).ok());
  ASSERT_TRUE((*w)->Append("L2.sum", "abc").ok());
  EXPECT_EQ((*w)->Finish().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(FileSize(path).ok());
  ASSERT_TRUE((*w)->Append("L2.tokens", std::string_view(reinterpret_cast<const char*>(&n), 8)).ok());
  ASSERT_TRUE((*w)->Finish().ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  auto a = (*f)->Get("L10.sum");
  auto b = (*f)->Get("L2.sum");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->data, std::string_view(reinterpret_cast<const char*>(d), 16));
  EXPECT_EQ(b->data, "abc");

  // Declared in sorted order, the bytes equal WriteSafetensors'.
  const std::string p2 = Tmp("stream2.safetensors"), p3 = Tmp("whole.safetensors");
  auto w2 = SafetensorsWriter::Create(p2, {{"a", DType::kU8, {2}}, {"b", DType::kU8, {1}}});
  ASSERT_TRUE(w2.ok());
  ASSERT_TRUE((*w2)->Append("a", "xy").ok() && (*w2)->Append("b", "z").ok());
  ASSERT_TRUE((*w2)->Finish().ok());
  ASSERT_TRUE(WriteSafetensors(p3, {{"b", DType::kU8, {1}, "z"}, {"a", DType::kU8, {2}, "xy"}}).ok());
  EXPECT_EQ(*ReadFile(p2), *ReadFile(p3));

  // In pieces: the same bytes; a piece past the tensor's size, a whole Append after a piece and
  // a piece of the wrong tensor are refused.
  const std::string p4 = Tmp("parts.safetensors");
  auto w4 = SafetensorsWriter::Create(p4, {{"a", DType::kU8, {2}}, {"b", DType::kU8, {1}}});
  ASSERT_TRUE(w4.ok());
  ASSERT_TRUE((*w4)->AppendPart("a", "x").ok());
  EXPECT_EQ((*w4)->AppendPart("a", "yz").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*w4)->Append("a", "y").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*w4)->AppendPart("b", "z").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*w4)->AppendPart("a", "y").ok());
  ASSERT_TRUE((*w4)->AppendPart("b", "z").ok());
  ASSERT_TRUE((*w4)->Finish().ok());
  EXPECT_EQ(*ReadFile(p4), *ReadFile(p3));

  // Abandoned: no file, no temp file.
  const std::string dir = Tmp("abandoned");
  RemoveAll(dir).IgnoreError();
  ASSERT_TRUE(MakeDirs(dir).ok());
  {
    auto w3 = SafetensorsWriter::Create(JoinPath(dir, "x.safetensors"), {{"a", DType::kU8, {1}}});
    ASSERT_TRUE(w3.ok());
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir));
  EXPECT_EQ(SafetensorsWriter::Create(Tmp("dup"), {{"a", DType::kU8, {1}}, {"a", DType::kU8, {1}}})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::model

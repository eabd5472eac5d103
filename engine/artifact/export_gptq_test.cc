// GPTQ export of stories260K in every layout (2/3/4/8 bits, symmetric and asymmetric grids,
// groups (one ragged) and per channel, act order), read back by a small reader written here from
// the format's description (docs/formats/exports.md: GPTQ's 32/bits values per int32 word, its
// explicit 3-word layout for 3 bits, zero − 1 in "gptq" and zero in "gptq_v2"), not from the
// writer's packing code: the codes must come back bit-exact, the zero points and g_idx exact, the
// scales as fp16 of the grid's. The engines (transformers + gptqmodel) are in
// tests/gptq_export_test.py.
#include "engine/artifact/export_gptq.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "engine/artifact/artifact.h"
#include "engine/artifact/artifact_test_util.h"
#include "engine/format/checkpoint.h"
#include "engine/format/float16.h"
#include "engine/model/test_util.h"
#include "engine/model/weights.h"
#include "engine/quant/packed_matrix.h"
#include "engine/quant/quantize.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace quantd::artifact {
namespace {

// ---- the independent reader --------------------------------------------------------------

uint32_t Word(const model::TensorView& t, size_t i) {
  uint32_t w;
  std::memcpy(&w, t.data.data() + 4 * i, 4);
  return w;
}

// Value i of a packed line whose words are word(0), word(1), ...: 2/4/8 bits hold 32/bits
// values per word, value i in word i/(32/bits) at bit (i mod 32/bits)·bits; 3 bits hold 32
// values per 3 words (GPTQ): word 0 values 0–9 at 3i and the low 2 bits of value 10 at bit 30,
// word 1 value 10's high bit at bit 0, values 11–20 at 3(i−11)+1 and value 21's low bit at bit
// 31, word 2 value 21's high 2 bits at bit 0 and values 22–31 at 3(i−22)+2.
template <typename WordAt>
uint32_t Unpack(WordAt word, int bits, int i) {
  if (bits != 3) {
    const int per = 32 / bits;
    return (word(i / per) >> ((i % per) * bits)) & ((1u << bits) - 1);
  }
  const int b = i / 32 * 3, k = i % 32;
  const uint32_t w0 = word(b), w1 = word(b + 1), w2 = word(b + 2);
  if (k < 10) return (w0 >> (3 * k)) & 7;
  if (k == 10) return ((w0 >> 30) & 3) | ((w1 & 1) << 2);
  if (k < 21) return (w1 >> (3 * (k - 11) + 1)) & 7;
  if (k == 21) return ((w1 >> 31) & 1) | ((w2 & 3) << 1);
  return (w2 >> (3 * (k - 22) + 2)) & 7;
}

float Half(const model::TensorView& t, size_t i) {
  uint16_t h;
  std::memcpy(&h, t.data.data() + 2 * i, 2);
  return model::HalfToFloat(h);
}

float Fp16(float x) { return model::HalfToFloat(model::FloatToHalf(x)); }

// ---- the cases ---------------------------------------------------------------------------

struct Case {
  const char* name;
  quant::Method method;
  int bits;
  int group_size;  // 0 = per channel
  quant::GridTarget grid;
  bool act_order;
};

class ExportGptqTest : public testing::NativeArtifactFixture<::testing::TestWithParam<Case>> {
 protected:
  ExportGptqTest() : NativeArtifactFixture("export_gptq_test") {}

  // The native artifact: every linear quantized with `spec` on a diagonal Hessian with unequal
  // entries (so act order really permutes). `positive` makes the first group of every row of
  // layer 0's q_proj non-negative, which gives an asymmetric grid the zero point 0.
  void WriteNative(const quant::QuantSpec& spec, bool positive = false) {
    auto ckpt = model::Checkpoint::Open(src_);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    auto diagonal = [](int cols) {
      MatrixD h = MatrixD::Zero(cols, cols);
      for (int j = 0; j < cols; ++j) h(j, j) = 1.0 + (j * 7) % 11;
      return h;
    };
    auto make_positive = [&](int l, model::Linear lin, MatrixF* w) {
      if (!positive || l != 0 || lin != model::kAllLinears[0]) return;
      const int len = spec.group_size > 0 ? spec.group_size : static_cast<int>(w->cols());
      for (int r = 0; r < w->rows(); ++r) {
        for (int c = 0; c < len; ++c) (*w)(r, c) = std::fabs((*w)(r, c));
      }
    };
    auto packed = testing::QuantizeAllLinears(**ckpt, 5, spec, diagonal, make_positive);
    ASSERT_TRUE(packed.ok()) << packed.status();
    packed_ = std::move(*packed);
    nlohmann::json s = {{"method", std::string(quant::MethodName(spec.method))},
                        {"bits", spec.bits},
                        {"group_size", spec.group_size},
                        {"act_order", spec.act_order},
                        {"grid", std::string(quant::GridTargetName(spec.grid))}};
    const absl::Status st = testing::WriteNativeArtifact(
        src_, packed_, nlohmann::json{{"name", "s"}, {"version", 2}, {"spec", s}}.dump(),
        tmp_ + "/native");
    ASSERT_TRUE(st.ok()) << st;
  }

  // Reads the export back and compares every linear with the artifact.
  void CheckExport(const Case& c, const std::string& want_format) {
    auto summary = ExportGptq(tmp_ + "/native", tmp_ + "/out");
    EXPECT_TRUE(summary.ok()) << summary.status();
    if (!summary.ok()) return;
    EXPECT_EQ(summary->checkpoint_format, want_format);
    auto config_text = ReadFile(tmp_ + "/out/config.json");
    EXPECT_TRUE(config_text.ok());
    const nlohmann::json config = nlohmann::json::parse(*config_text);
    const nlohmann::json q = config["quantization_config"];
    EXPECT_EQ(q["quant_method"], "gptq");
    EXPECT_EQ(q["bits"], c.bits);
    // Groups at least as wide as every packed linear's input (64 here) are per channel.
    EXPECT_EQ(q["group_size"], c.group_size > 0 && c.group_size < 64 ? c.group_size : -1);
    EXPECT_EQ(q["desc_act"], c.act_order);
    const bool sym = c.grid == quant::GridTarget::kGptqSym || c.grid == quant::GridTarget::kQ4_0 ||
                     c.grid == quant::GridTarget::kQ8_0;
    EXPECT_EQ(q["sym"], sym);
    EXPECT_EQ(q["checkpoint_format"], want_format);
    EXPECT_EQ(config["torch_dtype"], "float16");
    EXPECT_TRUE(ReadFile(tmp_ + "/out/tok512.bin").ok());
    const uint32_t offset = want_format == "gptq" ? 1 : 0;

    auto out = model::Checkpoint::Open(tmp_ + "/out");
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return;
    int packed = 0, dense = 0;
    std::set<std::string> quantized_modules;
    for (const auto& [name, bytes] : packed_) {
      auto pc = quant::DecodePacked(bytes);
      auto want = quant::DequantizeMatrix(bytes);
      EXPECT_TRUE(pc.ok() && want.ok());
      const int m = pc->m, n = pc->n, groups = quant::NumGroups(n, pc->group_size);
      const int gs = groups == 1 ? n : pc->group_size;
      const std::string prefix = name.substr(0, name.size() - 7);  // drop ".weight"
      const std::string module = prefix.substr(prefix.find('.', prefix.find("layers.") + 7) + 1);
      const int per = c.bits == 3 ? 32 : 32 / c.bits;
      if (m % per != 0 || n % per != 0) {
        // Dense fallback: fp16 of the exact dequantized weights.
        auto t = (*out)->Get(prefix + ".weight");
        EXPECT_TRUE(t.ok()) << name;
        if (!t.ok()) continue;
        EXPECT_EQ(t->dtype, model::DType::kF16);
        for (int64_t i = 0; i < want->size(); ++i) {
          ASSERT_EQ(Half(*t, i), Fp16(want->data()[i])) << name << " " << i;
        }
        EXPECT_FALSE((*out)->Get(prefix + ".qweight").ok()) << name;
        ++dense;
        continue;
      }
      quantized_modules.insert(module);
      auto qw = (*out)->Get(prefix + ".qweight");
      auto qz = (*out)->Get(prefix + ".qzeros");
      auto sc = (*out)->Get(prefix + ".scales");
      auto gi = (*out)->Get(prefix + ".g_idx");
      EXPECT_TRUE(qw.ok() && qz.ok() && sc.ok() && gi.ok()) << name;
      if (!(qw.ok() && qz.ok() && sc.ok() && gi.ok())) continue;
      EXPECT_EQ(qw->dtype, model::DType::kI32);
      EXPECT_EQ(qw->shape, (std::vector<int64_t>{n * c.bits / 32, m})) << name;
      EXPECT_EQ(qz->dtype, model::DType::kI32);
      EXPECT_EQ(qz->shape, (std::vector<int64_t>{groups, m * c.bits / 32})) << name;
      EXPECT_EQ(sc->dtype, model::DType::kF16);
      EXPECT_EQ(sc->shape, (std::vector<int64_t>{groups, m})) << name;
      EXPECT_EQ(gi->dtype, model::DType::kI32);
      EXPECT_EQ(gi->shape, (std::vector<int64_t>{n})) << name;
      const int zc = m * c.bits / 32;
      for (int r = 0; r < m; ++r) {
        for (int j = 0; j < n; ++j) {
          // qweight: output channel r is column r; its codes run down the input dimension.
          const uint32_t code =
              Unpack([&](int k) { return Word(*qw, static_cast<size_t>(k) * m + r); }, c.bits, j);
          ASSERT_EQ(code, pc->codes[static_cast<size_t>(r) * n + j]) << name << " " << r << "," << j;
          const int g = static_cast<int>(Word(*gi, j));
          ASSERT_EQ(g, j / gs) << name << " g_idx " << j;
          // What an engine computes: scales[g_idx] · (q − (stored zero + offset)).
          const uint32_t zero =
              Unpack([&](int k) { return Word(*qz, static_cast<size_t>(g) * zc + k); }, c.bits, r) +
              offset;
          const quant::ScalarGrid& grid = pc->grids[static_cast<size_t>(r) * groups + g];
          ASSERT_EQ(static_cast<float>(zero), grid.zero) << name << " " << r << " group " << g;
          const float scale = Half(*sc, static_cast<size_t>(g) * m + r);
          ASSERT_EQ(scale, Fp16(grid.scale)) << name;
          const float w = scale * (static_cast<float>(code) - static_cast<float>(zero));
          if (c.grid != quant::GridTarget::kDefault) {
            // fp16 grids: the stored numbers are the grid's own, so the engine's weight is ours.
            ASSERT_EQ(w, (*want)(r, j)) << name << " " << r << "," << j;
          }
        }
      }
      ++packed;
    }
    EXPECT_EQ(summary->quantized, packed);
    EXPECT_EQ(summary->dense, dense);
    EXPECT_EQ(packed + dense, 35);
    if (dense > 0) {
      ASSERT_TRUE(q.contains("modules_in_block_to_quantize"));
      std::set<std::string> listed;
      for (const auto& mod : q["modules_in_block_to_quantize"][0]) listed.insert(mod.get<std::string>());
      EXPECT_EQ(listed, quantized_modules);
    } else {
      EXPECT_FALSE(q.contains("modules_in_block_to_quantize"));
    }
    // The rest is fp16: the embedding and the norms.
    auto emb = (*out)->Get("model.embed_tokens.weight");
    EXPECT_TRUE(emb.ok() && emb->dtype == model::DType::kF16);
  }

  std::map<std::string, std::string> packed_;
};

quant::QuantSpec SpecOf(const Case& c) {
  quant::QuantSpec s;
  s.method = c.method;
  s.bits = c.bits;
  s.group_size = c.group_size;
  s.grid = c.grid;
  s.act_order = c.act_order;
  return s;
}

TEST_P(ExportGptqTest, CodesZerosScalesAndGroupsReadBackExactly) {
  const Case c = GetParam();
  WriteNative(SpecOf(c));
  // v1 ("gptq") unless some asymmetric group has zero point 0 (v1 stores zero − 1).
  bool zero_zero = false;
  for (const auto& [name, bytes] : packed_) {
    auto pc = quant::DecodePacked(bytes);
    ASSERT_TRUE(pc.ok());
    for (const quant::ScalarGrid& g : pc->grids) zero_zero = zero_zero || g.zero == 0;
  }
  CheckExport(c, zero_zero ? "gptq_v2" : "gptq");
}

// stories260K: hidden 64, kv 32, intermediate 172. 2/3/4 bits pack only the attention linears
// (172 does not fill words), 8 bits all of them; groups of 48 leave a ragged last group of 16.
INSTANTIATE_TEST_SUITE_P(
    Layouts, ExportGptqTest,
    ::testing::Values(
        Case{"plain_gptq_4bit_g128", quant::Method::kGptq, 4, 128, quant::GridTarget::kDefault, false},
        Case{"gptq_4bit_g32_asym", quant::Method::kGptq, 4, 32, quant::GridTarget::kDefault, false},
        Case{"gptq_4bit_sym_channel_actorder", quant::Method::kGptq, 4, 0, quant::GridTarget::kGptqSym, true},
        Case{"gptq_4bit_q4_0_actorder", quant::Method::kGptq, 4, 32, quant::GridTarget::kQ4_0, true},
        Case{"gptq_3bit_g48_asym_actorder", quant::Method::kGptq, 3, 48, quant::GridTarget::kGptqAsym, true},
        Case{"rtn_3bit_g32_sym", quant::Method::kRtn, 3, 32, quant::GridTarget::kGptqSym, false},
        Case{"rtn_2bit_channel_asym", quant::Method::kRtn, 2, 0, quant::GridTarget::kDefault, false},
        Case{"gptq_2bit_g16_sym", quant::Method::kGptq, 2, 16, quant::GridTarget::kGptqSym, false},
        Case{"gptq_8bit_g32_asym", quant::Method::kGptq, 8, 32, quant::GridTarget::kDefault, false},
        Case{"rtn_8bit_q8_0", quant::Method::kRtn, 8, 32, quant::GridTarget::kQ8_0, false}),
    [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

// A zero point of 0 (a group with no negative weight) cannot be written as GPTQ v1's zero − 1:
// the export switches to gptq_v2 and stores the zeros themselves, the 0s included.
TEST_F(ExportGptqTest, ZeroPointZeroSwitchesToGptqV2) {
  for (int bits : {3, 4}) {
    const Case c{"v2", quant::Method::kGptq, bits, 32, quant::GridTarget::kGptqAsym, false};
    packed_.clear();
    WriteNative(SpecOf(c), /*positive=*/true);
    CheckExport(c, "gptq_v2");
    auto q0 = quant::DecodePacked(packed_["model.layers.0.self_attn.q_proj.weight"]);
    ASSERT_TRUE(q0.ok());
    EXPECT_EQ(q0->grids[0].zero, 0.0f);  // the case the switch is for really occurred
    ASSERT_TRUE(RemoveAll(tmp_ + "/out").ok());
  }
}

TEST_F(ExportGptqTest, RefusesGridsGptqCannotHold) {
  // A q4_1 version (fractional zero points) is refused from its manifest.
  const Case q41{"q41", quant::Method::kGptq, 4, 32, quant::GridTarget::kQ4_1, false};
  WriteNative(SpecOf(q41));
  auto st = ExportGptq(tmp_ + "/native", tmp_ + "/out");
  EXPECT_EQ(st.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.status().message().find("fractional zero"), std::string::npos) << st.status();
  EXPECT_NE(st.status().message().find("can be fetched as: native, hf"), std::string::npos);
  EXPECT_FALSE(ReadFile(tmp_ + "/out/config.json").ok());
  // A manifest claiming a symmetric grid over asymmetric matrices: refused, naming the zero.
  packed_.clear();
  WriteNative(SpecOf({"a", quant::Method::kRtn, 4, 32, quant::GridTarget::kGptqAsym, false}));
  ASSERT_TRUE(WriteFileAtomic(tmp_ + "/native/manifest.json",
                              R"({"spec": {"method": "rtn", "bits": 4, "group_size": 32, "grid": "gptq-sym"}})")
                  .ok());
  st = ExportGptq(tmp_ + "/native", tmp_ + "/out");
  EXPECT_EQ(st.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.status().message().find("symmetric GPTQ checkpoint needs 8"), std::string::npos)
      << st.status();
  // Bits GPTQ has no layout for.
  ASSERT_TRUE(WriteFileAtomic(tmp_ + "/native/manifest.json",
                              R"({"spec": {"method": "gptq", "bits": 5, "group_size": 32, "grid": "q5_0"}})")
                  .ok());
  st = ExportGptq(tmp_ + "/native", tmp_ + "/out");
  EXPECT_EQ(st.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.status().message().find("2, 3, 4 or 8 bits"), std::string::npos) << st.status();
}

TEST(GptqPackableTest, WholeWordsAlongBothDimensions) {
  EXPECT_TRUE(GptqPackable(4, 64, 576));
  EXPECT_FALSE(GptqPackable(4, 172, 64));
  EXPECT_TRUE(GptqPackable(8, 172, 172));
  EXPECT_TRUE(GptqPackable(3, 32, 64));
  EXPECT_FALSE(GptqPackable(3, 48, 64));  // 3 bits: 32 values per 3 words
  EXPECT_TRUE(GptqPackable(2, 16, 32));
}

}  // namespace
}  // namespace quantd::artifact

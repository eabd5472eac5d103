#include "engine/quant/method_table.h"

#include <set>
#include <string>

#include "gtest/gtest.h"
#include "engine/quant/packed_matrix.h"
#include "engine/quant/quantize.h"
#include "engine/quant/rtn.h"
#include "engine/quant/synthetic.h"

namespace quantd::quant {
namespace {

TEST(MethodTableTest, NamesAndValuesAreUniqueAndRoundTrip) {
  std::set<std::string_view> names;
  std::set<int> values;
  for (const MethodTraits& t : AllMethods()) {
    EXPECT_TRUE(names.insert(t.name).second) << t.name;
    EXPECT_TRUE(values.insert(static_cast<int>(t.method)).second) << t.name;
    auto found = FindMethod(t.name);
    ASSERT_TRUE(found.ok()) << found.status();
    EXPECT_EQ((*found)->method, t.method);
    EXPECT_EQ(&TraitsOf(t.method), *found);
    EXPECT_EQ(MethodName(t.method), t.name);
  }
  EXPECT_EQ(names.size(), 7u);
  auto bad = FindMethod("zip");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("zip"), std::string::npos);
  EXPECT_NE(bad.status().message().find("quip-sharp"), std::string::npos);  // lists the names
  EXPECT_EQ(TraitsOf(static_cast<Method>(0)).bits_mask, 0u);
}

// What the table says a method takes is what validation accepts.
TEST(MethodTableTest, ValidationFollowsTheTable) {
  for (const MethodTraits& t : AllMethods()) {
    for (int bits = 0; bits <= 9; ++bits) {
      QuantSpec s;
      s.method = t.method;
      s.bits = bits;
      EXPECT_EQ(ValidateSpec(s).ok(), BitsAllowed(t, bits)) << t.name << " bits " << bits;
    }
    const int bits = BitsAllowed(t, 4) ? 4 : 2;
    auto with = [&](auto set) {
      QuantSpec s;
      s.method = t.method;
      s.bits = bits;
      set(s);
      return ValidateSpec(s).ok();
    };
    EXPECT_EQ(with([](QuantSpec& s) { s.group_size = 32; }), t.scalar_grid) << t.name;
    EXPECT_EQ(with([](QuantSpec& s) { s.mse_clip = true; }), t.scalar_grid) << t.name;
    EXPECT_EQ(with([](QuantSpec& s) { s.act_order = true; }), t.act_order) << t.name;
    EXPECT_EQ(with([](QuantSpec& s) { s.greedy_passes = 2; }), t.greedy_passes) << t.name;
    EXPECT_EQ(with([](QuantSpec& s) { s.codebook_scale = 1.5; }), t.codebook_scale) << t.name;
    EXPECT_EQ(with([](QuantSpec& s) {
                s.bits = 4;
                s.group_size = 32;
                s.grid = GridTarget::kQ4_0;
              }),
              t.export_grid)
        << t.name;
  }
}

// What the table says a method stores is what its packed matrices hold: the methods marked
// engine-exportable store per-row scalar grids without rotation (what GPTQ, compressed-tensors
// and GGUF hold), the guarded ones are rotated, and every method stores itself (quarot: gptq).
TEST(MethodTableTest, PackedMatricesHoldWhatTheTableSays) {
  auto dev = MakeCpuDevice(1);
  const MatrixF w = SyntheticWeight(16, 32, 7);
  const MatrixD h = SyntheticHessian(32, 8);
  for (const MethodTraits& t : AllMethods()) {
    QuantSpec s;
    s.method = t.method;
    s.bits = BitsAllowed(t, 4) ? 4 : 2;
    s.seed = 3;
    s.baseline_guard = false;
    if (t.trellis) s.trellis_l = 8;
    auto q = QuantizeMatrix(*dev, w, h, s, "t");
    ASSERT_TRUE(q.ok()) << t.name << ": " << q.status();
    auto c = DecodePacked(q->packed);
    ASSERT_TRUE(c.ok()) << t.name << ": " << c.status();
    const Method stored = t.transforms_model ? Method::kGptq : t.method;
    EXPECT_EQ(c->method, static_cast<uint8_t>(stored)) << t.name;
    const bool per_row_grids = !c->rht && c->codebook.empty() && c->trellis_l == 0 &&
                               c->grids.size() == static_cast<size_t>(c->m) * NumGroups(c->n, c->group_size);
    if (t.engine_exportable) EXPECT_TRUE(per_row_grids) << t.name;
    if (t.baseline_guard) EXPECT_TRUE(c->rht) << t.name;
  }
}

}  // namespace
}  // namespace quantd::quant

#include "engine/model/weights.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "engine/format/safetensors.h"
#include "engine/model/test_util.h"

namespace quantd::model {
namespace {

using testing::ExamplePath;

TEST(WeightsTest, Names) {
  EXPECT_EQ(LinearTensorName(3, Linear::kQ), "model.layers.3.self_attn.q_proj.weight");
  EXPECT_EQ(LinearTensorName(3, Linear::kDown), "model.layers.3.mlp.down_proj.weight");
  EXPECT_EQ(GroupName(GroupOf(Linear::kUp)), "gate_up");
  EXPECT_EQ(GroupName(GroupOf(Linear::kV)), "qkv");
  EXPECT_EQ(GroupName(LinearGroup::kO), "o");
  EXPECT_EQ(LinearName(Linear::kGate), "gate_proj");
}

TEST(WeightsTest, LoadsStories260K) {
  auto m = testing::LoadStories260K();
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->w.layers.size(), 5u);
  EXPECT_EQ(m->w.embed.rows(), 512);
  EXPECT_EQ(m->w.lm_head.size(), 0);
  EXPECT_EQ(GetLinear(m->w, 4, Linear::kDown).cols(), 172);
  EXPECT_EQ(GetLinear(m->w, 0, Linear::kK).rows(), 32);
  EXPECT_EQ(GroupInputDim(m->cfg, LinearGroup::kDown), 172);
  EXPECT_EQ(GroupInputDim(m->cfg, LinearGroup::kO), 64);
  int count = 0;
  for (int l = 0; l < 5; ++l)
    for (Linear lin : kAllLinears) count += GetLinear(m->w, l, lin).size() > 0;
  EXPECT_EQ(count, 35);
}

// Rewrites the example checkpoint with one tensor reshaped, and checks the message.
TEST(WeightsTest, WrongShapeNamesLayerAndShapes) {
  auto src = SafetensorsFile::Open(ExamplePath("stories260K/model.safetensors"));
  ASSERT_TRUE(src.ok());
  std::vector<TensorToWrite> out;
  for (const std::string& n : (*src)->Names()) {
    if (n == "model.layers.3.mlp.down_proj.weight") {
      out.push_back({n, DType::kF32, {64, 171}, std::string(64 * 171 * 4, '\0')});
      continue;
    }
    auto t = (*src)->Get(n);
    out.push_back({n, t->dtype, t->shape, std::string(t->data)});
  }
  const std::string path = ::testing::TempDir() + "/bad_shape.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, out).ok());
  auto cfg = LoadLlamaConfig(ExamplePath("stories260K"));
  auto ck = Checkpoint::Open(path);
  ASSERT_TRUE(cfg.ok() && ck.ok());
  auto w = LoadLlamaWeights(**ck, *cfg);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(w.status().message().find(
                "layer 3 down_proj: weight has shape [64,171], config.json says [64,172]"),
            absl::string_view::npos)
      << w.status();

  // An untied config wants lm_head.weight.
  LlamaConfig untied = *cfg;
  untied.tie_word_embeddings = false;
  auto src_ck = Checkpoint::Open(ExamplePath("stories260K"));
  ASSERT_TRUE(src_ck.ok());
  auto u = LoadLlamaWeights(**src_ck, untied);
  EXPECT_EQ(u.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(u.status().message().find("lm_head.weight"), absl::string_view::npos) << u.status();
}

TEST(WeightsTest, ShardedCheckpoint) {
  auto src = SafetensorsFile::Open(ExamplePath("stories260K/model.safetensors"));
  ASSERT_TRUE(src.ok());
  const std::string dir = ::testing::TempDir() + "/sharded";
  ASSERT_TRUE(MakeDirs(dir).ok());
  std::vector<TensorToWrite> a, b;
  std::string map;
  for (const std::string& n : (*src)->Names()) {
    auto t = (*src)->Get(n);
    const bool first = n < "model.layers.2";
    (first ? a : b).push_back({n, t->dtype, t->shape, std::string(t->data)});
    map += (map.empty() ? "" : ",") + ("\"" + n + "\":\"") + (first ? "s1.safetensors" : "s2.safetensors") + "\"";
  }
  ASSERT_TRUE(WriteSafetensors(dir + "/s1.safetensors", a).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/s2.safetensors", b).ok());
  ASSERT_TRUE(WriteFileAtomic(dir + "/model.safetensors.index.json",
                              "{\"metadata\":{},\"weight_map\":{" + map + "}}")
                  .ok());
  auto ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ((*ck)->Names(), (*src)->Names());
  auto cfg = LoadLlamaConfig(ExamplePath("stories260K"));
  auto w = LoadLlamaWeights(**ck, *cfg);
  ASSERT_TRUE(w.ok()) << w.status();
  auto ref = testing::LoadStories260K();
  EXPECT_EQ(w->layers[4].down, ref->w.layers[4].down);

  ASSERT_TRUE(WriteFileAtomic(dir + "/model.safetensors.index.json",
                              R"({"weight_map":{"x":"../etc/passwd"}})")
                  .ok());
  EXPECT_EQ(Checkpoint::Open(dir).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Checkpoint::Open(::testing::TempDir() + "/no_model_here").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace quantd::model

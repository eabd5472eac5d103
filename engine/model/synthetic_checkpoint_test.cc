#include "engine/model/synthetic_checkpoint.h"

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "engine/format/checkpoint.h"
#include "engine/model/streamed_forward.h"
#include "engine/model/weights.h"
#include "engine/tokenizer/tokenizer_hf.h"
#include "nlohmann/json.hpp"

namespace quantd::model {
namespace {

std::string TmpDir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "/synth_" + name;
  RemoveAll(d).IgnoreError();
  return d;
}

TEST(SyntheticCheckpointTest, TinyShapeIsAShardedLoadableModelWithATokenizer) {
  auto shape = SyntheticShapeByName("tiny");
  ASSERT_TRUE(shape.ok()) << shape.status();
  const std::string dir = TmpDir("tiny");
  SyntheticOptions o;
  o.max_shard_bytes = 40000;  // several shards
  auto r = WriteSyntheticCheckpoint(shape->cfg, dir, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->shards, 2);

  auto cfg = LoadLlamaConfig(dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->hidden_size, 64);
  EXPECT_EQ(cfg->num_kv_heads, 2);
  EXPECT_EQ(cfg->vocab_size, 512);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto index = ReadFile(JoinPath(dir, "model.safetensors.index.json"));
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(nlohmann::json::parse(*index)["metadata"]["total_size"].get<int64_t>(), r->total_bytes);
  auto t = (*ckpt)->Get("model.layers.1.mlp.down_proj.weight");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->dtype, DType::kBF16);
  auto w = LoadLlamaWeights(**ckpt, *cfg);
  ASSERT_TRUE(w.ok()) << w.status();
  // Realistic scales: linears N(0, 0.02), norms near 1.
  const MatrixF& up = w->layers[0].up;
  const double mean = up.mean();
  const double sd = std::sqrt((up.array() - mean).square().mean());
  EXPECT_NEAR(mean, 0.0, 2e-3);
  EXPECT_NEAR(sd, 0.02, 1e-3);
  EXPECT_NEAR(w->final_norm.mean(), 1.0, 0.02);

  auto tok = HfTokenizer::Load(JoinPath(dir, "tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("Hello world, 42!", /*bos=*/true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_FALSE(ids->empty());
  EXPECT_EQ((*ids)[0], 1);
  for (int32_t id : *ids) EXPECT_LT(id, 512);
  auto text = (*tok)->Decode(absl::Span<const int32_t>(*ids).subspan(1));
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "Hello world, 42!");

  // The layer-streamed forward runs on it and gives finite values.
  CheckpointWeightSource src(*cfg, **ckpt);
  std::vector<absl::Span<const int32_t>> seqs = {*ids, *ids};
  auto h = ForwardBatch(*cfg, src, seqs);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(h->allFinite());

  // Deterministic in the seed.
  const std::string again = TmpDir("tiny2");
  ASSERT_TRUE(WriteSyntheticCheckpoint(shape->cfg, again, o).ok());
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    EXPECT_EQ(*ReadFile(e.path().string()), *ReadFile(JoinPath(again, n))) << n;
  }
  RemoveAll(dir).IgnoreError();
  RemoveAll(again).IgnoreError();
}

TEST(SyntheticCheckpointTest, KnowsTheRealShapesAndRejectsOthers) {
  auto b7 = SyntheticShapeByName("llama2-7b");
  ASSERT_TRUE(b7.ok());
  EXPECT_EQ(b7->cfg.hidden_size, 4096);
  EXPECT_EQ(b7->cfg.num_layers, 32);
  EXPECT_EQ(b7->cfg.intermediate_size, 11008);
  EXPECT_EQ(b7->cfg.vocab_size, 32000);
  auto b1 = SyntheticShapeByName("tinyllama-1.1b");
  ASSERT_TRUE(b1.ok());
  EXPECT_EQ(b1->cfg.num_layers, 22);
  EXPECT_EQ(b1->cfg.num_kv_heads, 4);
  EXPECT_EQ(b1->cfg.intermediate_size, 5632);
  EXPECT_EQ(SyntheticShapeByName("gpt5").status().code(), absl::StatusCode::kInvalidArgument);
  SyntheticOptions o;
  o.max_shard_bytes = 0;
  EXPECT_EQ(WriteSyntheticCheckpoint(b1->cfg, TmpDir("bad"), o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::model

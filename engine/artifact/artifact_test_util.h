// Test helpers for the artifact library: native artifact directories made from stories260K (or
// any checkpoint) with chosen matrices quantized, as the exporters' tests read them.
// Thread-safety: not thread-safe (test-only).
#ifndef QUANTD_ENGINE_ARTIFACT_ARTIFACT_TEST_UTIL_H_
#define QUANTD_ENGINE_ARTIFACT_ARTIFACT_TEST_UTIL_H_

#include <unistd.h>

#include <functional>
#include <map>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/file_util.h"
#include "engine/artifact/artifact.h"
#include "engine/format/checkpoint.h"
#include "engine/model/test_util.h"
#include "engine/model/weights.h"
#include "engine/quant/quantize.h"
#include "gtest/gtest.h"

namespace quantd::artifact::testing {

// Every linear of `layers` layers of `ckpt` quantized with `spec` on the Hessian `hessian(cols)`;
// `edit`, when given, changes a weight matrix before it is quantized. Tensor name -> packed bytes.
inline absl::StatusOr<std::map<std::string, std::string>> QuantizeAllLinears(
    const model::Checkpoint& ckpt, int layers, const quant::QuantSpec& spec,
    const std::function<MatrixD(int cols)>& hessian,
    const std::function<void(int layer, model::Linear lin, MatrixF* w)>& edit = nullptr) {
  auto dev = quant::MakeCpuDevice(1);
  std::map<std::string, std::string> packed;
  for (int l = 0; l < layers; ++l) {
    for (model::Linear lin : model::kAllLinears) {
      const std::string name = model::LinearTensorName(l, lin);
      auto w = ckpt.ReadMatrix(name);
      if (!w.ok()) return w.status();
      if (edit) edit(l, lin, &*w);
      auto q = quant::QuantizeMatrix(*dev, *w, hessian(static_cast<int>(w->cols())), spec, name);
      if (!q.ok()) return q.status();
      packed[name] = q->packed;
    }
  }
  return packed;
}

// Writes the native artifact directory `dir` (which must exist) from the checkpoint directory
// `src`: model.safetensors with the `packed` matrices in place of those tensors, config.json and
// tok512.bin copied, and manifest.json holding `manifest`.
inline absl::Status WriteNativeArtifact(const std::string& src,
                                        const std::map<std::string, std::string>& packed,
                                        const std::string& manifest, const std::string& dir) {
  auto ckpt = model::Checkpoint::Open(src);
  if (!ckpt.ok()) return ckpt.status();
  absl::Status s = WriteArtifactModel(**ckpt, packed, dir + "/model.safetensors");
  if (!s.ok()) return s;
  for (const char* f : {"config.json", "tok512.bin"}) {
    auto bytes = ReadFile(src + "/" + f);
    if (!bytes.ok()) return bytes.status();
    s = WriteFileAtomic(dir + "/" + f, *bytes);
    if (!s.ok()) return s;
  }
  return WriteFileAtomic(dir + "/manifest.json", manifest);
}

// A fixture (Base: ::testing::Test or ::testing::TestWithParam<...>) with src_ the stories260K
// directory and tmp_ a fresh TempDir()/NAME_PID holding an empty native/, removed afterwards.
template <typename Base>
class NativeArtifactFixture : public Base {
 protected:
  explicit NativeArtifactFixture(std::string name) : name_(std::move(name)) {}
  void SetUp() override {
    src_ = model::testing::ExamplePath("stories260K");
    tmp_ = ::testing::TempDir() + "/" + name_ + "_" + std::to_string(getpid());
    ASSERT_TRUE(MakeDirs(tmp_ + "/native").ok());
  }
  void TearDown() override { ASSERT_TRUE(RemoveAll(tmp_).ok()); }

  std::string src_, tmp_;

 private:
  std::string name_;
};

}  // namespace quantd::artifact::testing

#endif  // QUANTD_ENGINE_ARTIFACT_ARTIFACT_TEST_UTIL_H_

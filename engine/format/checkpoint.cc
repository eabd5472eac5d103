#include "engine/format/checkpoint.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/str_util.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "engine/format/float16.h"

namespace quantd::model {
namespace {

bool IsRegularFile(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  std::unique_ptr<Checkpoint> c(new Checkpoint());
  c->dir_ = dir;
  auto add_whole_file = [&c](const std::string& path) -> absl::Status {
    QUANTD_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(path));
    for (const std::string& n : f->Names()) c->where_[n] = f.get();
    c->shards_.push_back(std::move(f));
    return absl::OkStatus();
  };
  if (IsRegularFile(dir)) {
    QUANTD_RETURN_IF_ERROR(add_whole_file(dir));
    return c;
  }
  const std::string single = JoinPath(dir, "model.safetensors");
  const std::string index = JoinPath(dir, "model.safetensors.index.json");
  if (IsRegularFile(single)) {
    QUANTD_RETURN_IF_ERROR(add_whole_file(single));
    return c;
  }
  if (!IsRegularFile(index)) {
    return absl::NotFoundError(
        internal::Cat(dir, ": neither model.safetensors nor model.safetensors.index.json"));
  }
  QUANTD_ASSIGN_OR_RETURN(std::string text, ReadFile(index, 1 << 28));
  auto bad = [&index](absl::string_view what) {
    return absl::InvalidArgumentError(internal::Cat(index, ": ", what));
  };
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object()) return bad("missing \"weight_map\" object");
  std::map<std::string, const SafetensorsFile*> opened;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      return bad(internal::Cat("weight_map[\"", it.key(), "\"] is not a string"));
    }
    const std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
      return bad(internal::Cat("shard name \"", shard, "\" for \"", it.key(),
                              "\" must be a plain file name"));
    }
    auto o = opened.find(shard);
    if (o == opened.end()) {
      QUANTD_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(JoinPath(dir, shard)));
      o = opened.emplace(shard, f.get()).first;
      c->shards_.push_back(std::move(f));
    }
    if (!o->second->Get(it.key()).ok()) {
      return bad(internal::Cat("tensor \"", it.key(), "\" is not in shard ", shard));
    }
    c->where_[it.key()] = o->second;
  }
  return c;
}

std::vector<std::string> Checkpoint::Names() const { return IndexNames(where_); }

absl::StatusOr<TensorView> Checkpoint::Get(std::string_view name) const {
  QUANTD_ASSIGN_OR_RETURN(auto it, FindTensor(where_, dir_, name));
  return it->second->Get(name);
}

absl::Status ConvertToF32(const TensorView& t, int64_t first, int64_t count, float* out) {
  const size_t es = DTypeSize(t.dtype);
  if (first < 0 || count < 0 || static_cast<uint64_t>(first + count) * es > t.data.size()) {
    return absl::InvalidArgumentError(internal::Cat("tensor \"", t.name, "\": elements [", first,
                                                   ", ", first + count, ") outside its ",
                                                   t.data.size() / std::max<size_t>(es, 1),
                                                   " elements"));
  }
  const char* p = t.data.data() + first * es;
  const int64_t n = count;
  switch (t.dtype) {
    case DType::kF32:
      std::memcpy(out, p, n * 4);  // little-endian host assumed (x86/arm64)
      break;
    case DType::kF64:
      for (int64_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        out[i] = static_cast<float>(d);
      }
      break;
    case DType::kF16:
      HalfsToFloats(p, n, out);
      break;
    case DType::kBF16:
      BFloat16sToFloats(p, n, out);
      break;
    default:
      return absl::InvalidArgumentError(internal::Cat("tensor \"", t.name, "\" has dtype ",
                                                     DTypeName(t.dtype),
                                                     ", expected F64/F32/F16/BF16"));
  }
  return absl::OkStatus();
}

absl::StatusOr<MatrixF> Checkpoint::ReadMatrix(std::string_view name) const {
  QUANTD_ASSIGN_OR_RETURN(TensorView t, Get(name));
  int64_t rows, cols;
  if (t.shape.size() == 2) {
    rows = t.shape[0];
    cols = t.shape[1];
  } else if (t.shape.size() == 1) {
    rows = 1;
    cols = t.shape[0];
  } else {
    return absl::InvalidArgumentError(internal::Cat(
        dir_, ": tensor \"", name, "\" has rank ", t.shape.size(), ", expected 1 or 2"));
  }
  MatrixF m(rows, cols);
  absl::Status s = ConvertToF32(t, 0, rows * cols, m.data());
  if (!s.ok()) return absl::InvalidArgumentError(internal::Cat(dir_, ": ", s.message()));
  return m;
}

absl::Status Checkpoint::ReadRows(std::string_view name, int64_t begin, int64_t count,
                                  MatrixF* out) const {
  QUANTD_ASSIGN_OR_RETURN(TensorView t, Get(name));
  if (t.shape.size() != 2) {
    return absl::InvalidArgumentError(internal::Cat(
        dir_, ": tensor \"", name, "\" has rank ", t.shape.size(), ", expected 2"));
  }
  if (begin < 0 || count < 0 || begin + count > t.shape[0]) {
    return absl::InvalidArgumentError(internal::Cat(dir_, ": tensor \"", name, "\": rows [",
                                                   begin, ", ", begin + count, ") outside its ",
                                                   t.shape[0], " rows"));
  }
  out->resize(count, t.shape[1]);
  absl::Status s = ConvertToF32(t, begin * t.shape[1], count * t.shape[1], out->data());
  if (!s.ok()) return absl::InvalidArgumentError(internal::Cat(dir_, ": ", s.message()));
  return absl::OkStatus();
}

void Checkpoint::ReleasePages(std::string_view name) const {
  auto t = Get(name);
  if (t.ok()) model::ReleasePages(t->data);
}

}  // namespace quantd::model

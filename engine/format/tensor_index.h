// Name -> entry lookup shared by SafetensorsFile (entries of one file) and Checkpoint (the
// shard holding each tensor): their Names() and the NOT_FOUND of their Get().
// Thread-safety: stateless functions over a const map.
#ifndef QUANTD_ENGINE_FORMAT_TENSOR_INDEX_H_
#define QUANTD_ENGINE_FORMAT_TENSOR_INDEX_H_

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/str_util.h"

namespace quantd::model {

template <typename Entry>
using TensorIndex = std::map<std::string, Entry, std::less<>>;

// Every tensor name of `index`, sorted.
template <typename Entry>
std::vector<std::string> IndexNames(const TensorIndex<Entry>& index) {
  std::vector<std::string> out;
  out.reserve(index.size());
  for (const auto& [name, e] : index) out.push_back(name);
  return out;
}

// The entry of `name`; NOT_FOUND "<where>: no tensor "<name>"" if absent.
template <typename Entry>
absl::StatusOr<typename TensorIndex<Entry>::const_iterator> FindTensor(
    const TensorIndex<Entry>& index, std::string_view where, std::string_view name) {
  auto it = index.find(name);
  if (it == index.end()) {
    return absl::NotFoundError(internal::Cat(where, ": no tensor \"", name, "\""));
  }
  return it;
}

}  // namespace quantd::model

#endif  // QUANTD_ENGINE_FORMAT_TENSOR_INDEX_H_

#include "engine/quant/method_table.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace quantd::quant {
namespace {

constexpr uint32_t Bits(std::initializer_list<int> widths) {
  uint32_t mask = 0;
  for (int b : widths) mask |= 1u << b;
  return mask;
}

// Facts behind the rows: docs/algorithms.md (each method), docs/formats/packed_matrix.md (what a
// packed matrix holds), docs/formats/exports.md (which grids engines store exactly).
constexpr MethodTraits kMethods[] = {
    // method            name          bits               scalar export act   greedy cbook  trellis hess   model  guard  engine
    {Method::kRtn,       "rtn",        Bits({2, 3, 4, 8}), true,  true,  false, false, false, false, false, false, false, true},
    {Method::kGptq,      "gptq",       Bits({2, 3, 4, 8}), true,  true,  true,  false, false, false, true,  false, false, true},
    {Method::kQuip,      "quip",       Bits({2, 3, 4}),    false, false, false, false, false, false, true,  false, true,  false},
    {Method::kQuipSharp, "quip-sharp", Bits({2, 3, 4}),    false, false, false, true,  true,  false, true,  false, true,  false},
    {Method::kQtip,      "qtip",       Bits({2, 3, 4}),    false, false, false, false, true,  true,  true,  false, true,  false},
    {Method::kQuarot,    "quarot",     Bits({2, 3, 4}),    true,  false, true,  false, false, false, true,  true,  false, false},
    {Method::kButterfly, "butterfly",  Bits({2, 3, 4}),    false, false, false, false, false, false, true,  false, true,  false},
};

constexpr MethodTraits kUnknown = {static_cast<Method>(0), "unknown", 0,     false, false, false,
                                   false,                  false,     false, false, false, false,
                                   false};

}  // namespace

absl::Span<const MethodTraits> AllMethods() { return kMethods; }

const MethodTraits& TraitsOf(Method m) {
  for (const MethodTraits& t : kMethods) {
    if (t.method == m) return t;
  }
  return kUnknown;
}

absl::StatusOr<const MethodTraits*> FindMethod(std::string_view name) {
  std::vector<std::string> names;
  for (const MethodTraits& t : kMethods) {
    if (t.name == name) return &t;
    names.emplace_back(t.name);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown method \"", std::string(name), "\" (want ",
                                                 absl::StrJoin(names, ", "), ")"));
}

}  // namespace quantd::quant

#include "engine/model/rope.h"

#include <cmath>
#include <optional>
#include <set>
#include <string>

#include "common/status_macros.h"
#include "common/str_util.h"

namespace quantd::model {
namespace {

using json = nlohmann::json;

absl::Status Bad(const std::string& what) { return absl::InvalidArgumentError(what); }

// A number at `obj[key]` in (lo, hi) (lo inclusive when `lo_inclusive`); nullopt if absent/null.
absl::StatusOr<std::optional<double>> Number(const json& obj, const std::string& where,
                                             const char* key, double lo, bool lo_inclusive,
                                             double hi) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<double>();
  const std::string name = internal::Cat(where, key);
  if (!it->is_number()) {
    return Bad(internal::Cat("config: ", name, " must be a number, got ", it->dump()));
  }
  const double v = it->get<double>();
  if (!(lo_inclusive ? v >= lo : v > lo) || !(v < hi)) {
    return Bad(internal::Cat("config: ", name, " = ", it->dump(), " is outside ",
                            lo_inclusive ? "[" : "(", lo, ", ", hi, ")"));
  }
  return std::optional<double>(v);
}

// One reading of the RoPE settings. `obj` is the RoPE object (rope_parameters or rope_scaling;
// nullptr: none) and `where` its key with a trailing '.' for messages; rope_theta comes from
// `obj` when `theta_from_obj` and it has one, else `top_theta`, else 10000.
absl::StatusOr<RopeParams> Read(const json* obj, const std::string& where, bool theta_from_obj,
                                std::optional<double> top_theta, int max_position_embeddings) {
  RopeParams p;
  p.theta = top_theta.value_or(10000.0);
  if (obj == nullptr) return p;
  if (!obj->is_object()) {
    return Bad(internal::Cat("config: ", where.substr(0, where.size() - 1),
                            " must be an object, got ", obj->dump()));
  }
  std::string type = "default";
  const auto rt = obj->find("rope_type");
  const auto t = obj->find("type");  // the name before transformers 4.43
  for (auto it : {t, rt}) {
    if (it == obj->end() || it->is_null()) continue;
    if (!it->is_string()) {
      return Bad(internal::Cat("config: ", where, it.key(), " must be a string, got ", it->dump()));
    }
    type = it->get<std::string>();
  }
  if (rt != obj->end() && t != obj->end() && rt->is_string() && t->is_string() && *rt != *t) {
    return Bad(internal::Cat("config: ", where, "type = ", t->dump(), " and ", where,
                            "rope_type = ", rt->dump(), " disagree"));
  }
  std::set<std::string> used = {"rope_type", "type", "rope_theta", "partial_rotary_factor"};
  if (type == "default") {
    p.type = RopeType::kDefault;
  } else if (type == "linear") {
    p.type = RopeType::kLinear;
    used.insert("factor");
  } else if (type == "llama3") {
    p.type = RopeType::kLlama3;
    used.insert({"factor", "low_freq_factor", "high_freq_factor",
                 "original_max_position_embeddings"});
  } else {
    return Bad(internal::Cat("config: ", where, "rope_type = \"", type,
                            "\" is not supported (supported: default, linear, llama3)"));
  }
  for (const auto& [key, value] : obj->items()) {
    if (used.count(key) == 0) {
      return Bad(internal::Cat("config: ", where, key, " = ", value.dump(),
                              " is not used by rope_type \"", type,
                              "\"; quantd refuses keys it would ignore"));
    }
  }
  if (theta_from_obj) {
    QUANTD_ASSIGN_OR_RETURN(auto theta, Number(*obj, where, "rope_theta", 0, false, 1e12));
    if (theta) p.theta = *theta;
  }
  QUANTD_ASSIGN_OR_RETURN(auto partial,
                          Number(*obj, where, "partial_rotary_factor", 0, false, 2));
  if (partial && *partial != 1.0) {
    return Bad(internal::Cat("config: ", where, "partial_rotary_factor = ", *partial,
                            " is not supported (RoPE on the whole head only)"));
  }
  if (p.type == RopeType::kDefault) return p;
  QUANTD_ASSIGN_OR_RETURN(auto factor, Number(*obj, where, "factor", 0, false, 1e6));
  if (!factor) {
    return Bad(internal::Cat("config: ", where, "factor is missing (rope_type ", type, ")"));
  }
  p.factor = *factor;
  if (p.type == RopeType::kLinear) return p;
  if (p.factor < 1) {
    return Bad(internal::Cat("config: ", where, "factor = ", p.factor, " must be >= 1 for llama3"));
  }
  QUANTD_ASSIGN_OR_RETURN(auto low, Number(*obj, where, "low_freq_factor", 0, false, 1e6));
  QUANTD_ASSIGN_OR_RETURN(auto high, Number(*obj, where, "high_freq_factor", 0, false, 1e6));
  if (!low || !high) {
    return Bad(internal::Cat("config: ", where, !low ? "low" : "high",
                            "_freq_factor is missing (rope_type llama3)"));
  }
  if (!(*high > *low)) {
    return Bad(internal::Cat("config: ", where, "high_freq_factor = ", *high,
                            " must be greater than low_freq_factor = ", *low));
  }
  p.low_freq_factor = *low;
  p.high_freq_factor = *high;
  p.original_max_position_embeddings = max_position_embeddings;
  if (auto it = obj->find("original_max_position_embeddings"); it != obj->end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > (1 << 24)) {
      return Bad(internal::Cat("config: ", where, "original_max_position_embeddings = ",
                              it->dump(), " must be an integer in [1, ", 1 << 24, "]"));
    }
    p.original_max_position_embeddings = static_cast<int>(it->get<int64_t>());
  }
  return p;
}

std::string Describe(const RopeParams& p) {
  std::string s = internal::Cat("rope_type ", RopeTypeName(p.type), ", rope_theta ", p.theta);
  if (p.type != RopeType::kDefault) s += internal::Cat(", factor ", p.factor);
  if (p.type == RopeType::kLlama3) {
    s += internal::Cat(", low_freq_factor ", p.low_freq_factor, ", high_freq_factor ",
                       p.high_freq_factor, ", original_max_position_embeddings ",
                       p.original_max_position_embeddings);
  }
  return s;
}

}  // namespace

bool RopeParams::operator==(const RopeParams& o) const {
  return type == o.type && theta == o.theta && factor == o.factor &&
         low_freq_factor == o.low_freq_factor && high_freq_factor == o.high_freq_factor &&
         original_max_position_embeddings == o.original_max_position_embeddings;
}

std::string_view RopeTypeName(RopeType t) {
  switch (t) {
    case RopeType::kLinear:
      return "linear";
    case RopeType::kLlama3:
      return "llama3";
    case RopeType::kDefault:
      break;
  }
  return "default";
}

absl::StatusOr<RopeParams> ParseRopeParams(const json& config, int max_position_embeddings) {
  auto present = [&](const char* key) -> const json* {
    auto it = config.find(key);
    return it == config.end() || it->is_null() ? nullptr : &*it;
  };
  const json* params = present("rope_parameters");
  const json* scaling = present("rope_scaling");
  QUANTD_ASSIGN_OR_RETURN(std::optional<double> top_theta,
                          Number(config, "", "rope_theta", 0, false, 1e12));
  // A top-level partial_rotary_factor is moved into the RoPE object by transformers 5 and read
  // directly by transformers 4: either way it applies.
  QUANTD_ASSIGN_OR_RETURN(auto partial, Number(config, "", "partial_rotary_factor", 0, false, 2));
  if (partial && *partial != 1.0) {
    return Bad(internal::Cat("config: partial_rotary_factor = ", *partial,
                            " is not supported (RoPE on the whole head only)"));
  }
  // transformers 5: a non-empty rope_scaling replaces rope_parameters.
  const bool scaling_wins = scaling != nullptr && !(scaling->is_object() && scaling->empty());
  const json* v5_obj = scaling_wins ? scaling : params;
  const std::string v5_where = scaling_wins ? "rope_scaling." : "rope_parameters.";
  QUANTD_ASSIGN_OR_RETURN(
      RopeParams v5, Read(v5_obj, v5_where, true, top_theta, max_position_embeddings));
  struct Reading {
    const char* who;
    RopeParams p;
  };
  std::vector<Reading> others;
  if (top_theta || scaling != nullptr) {  // transformers 4 reads only the old keys
    QUANTD_ASSIGN_OR_RETURN(RopeParams v4, Read(scaling, "rope_scaling.", false, top_theta,
                                                max_position_embeddings));
    others.push_back({"transformers 4 (rope_theta, rope_scaling)", v4});
  }
  if (params != nullptr && scaling_wins) {  // what the user may have meant by rope_parameters
    QUANTD_ASSIGN_OR_RETURN(RopeParams own, Read(params, "rope_parameters.", true, top_theta,
                                                 max_position_embeddings));
    others.push_back({"rope_parameters alone", own});
  }
  for (const Reading& r : others) {
    if (r.p != v5) {
      return Bad(internal::Cat(
          "config: the RoPE keys disagree: transformers 5 reads ", Describe(v5), "; ", r.who,
          " gives ", Describe(r.p), ". Keep one layout: \"rope_parameters\" or the older "
          "\"rope_theta\" + \"rope_scaling\""));
    }
  }
  return v5;
}

std::vector<float> RopeInverseFrequencies(const RopeParams& p, int head_dim) {
  const int half = head_dim / 2;
  std::vector<float> out(half);
  constexpr double kPi = 3.14159265358979323846;
  for (int i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(p.theta, (2.0 * i) / head_dim);
    if (p.type == RopeType::kLinear) {
      f /= p.factor;
    } else if (p.type == RopeType::kLlama3) {
      // Meta's apply_scaling (Llama 3.1), as transformers' _compute_llama3_parameters.
      const double old_ctx = p.original_max_position_embeddings;
      const double low_wavelen = old_ctx / p.low_freq_factor;
      const double high_wavelen = old_ctx / p.high_freq_factor;
      const double wavelen = 2 * kPi / f;
      if (wavelen > low_wavelen) {
        f /= p.factor;
      } else if (!(wavelen < high_wavelen)) {
        const double smooth =
            (old_ctx / wavelen - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor);
        f = (1 - smooth) * f / p.factor + smooth * f;
      }
    }
    out[i] = static_cast<float>(f);
  }
  return out;
}

}  // namespace quantd::model

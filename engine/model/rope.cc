#include "engine/model/rope.h"

#include <algorithm>
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

// A list of positive numbers at `obj[key]` (longrope's factors); INVALID_ARGUMENT if absent.
absl::StatusOr<std::vector<double>> Factors(const json& obj, const std::string& where,
                                            const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    return Bad(internal::Cat("config: ", where, key, " is missing (rope_type longrope)"));
  }
  if (!it->is_array() || it->empty() || it->size() > 4096) {
    return Bad(internal::Cat("config: ", where, key, " must be a list of numbers, got ",
                            it->dump().substr(0, 80)));
  }
  std::vector<double> v;
  for (const json& x : *it) {
    if (!x.is_number() || !(x.get<double>() > 0) || !(x.get<double>() < 1e9)) {
      return Bad(internal::Cat("config: ", where, key, " has the entry ", x.dump(),
                              "; each must be a number in (0, 1e9)"));
    }
    v.push_back(x.get<double>());
  }
  return v;
}

// YaRN's mscale (transformers' yarn_get_mscale).
double YarnMscale(double scale, double mscale) {
  return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// One reading of the RoPE settings. `obj` is the RoPE object (rope_parameters or rope_scaling;
// nullptr: none) and `where` its key with a trailing '.' for messages; rope_theta and
// partial_rotary_factor come from `obj` when `from_obj` and it has them, else the top-level
// values, else 10000 and 1.
absl::StatusOr<RopeParams> Read(const json* obj, const std::string& where, bool from_obj,
                                std::optional<double> top_theta, std::optional<double> top_partial,
                                const RopeParseOptions& opts) {
  RopeParams p;
  p.theta = top_theta.value_or(10000.0);
  p.partial_rotary_factor = top_partial.value_or(1.0);
  if (obj != nullptr && !obj->is_object()) {
    return Bad(internal::Cat("config: ", where.substr(0, where.size() - 1),
                            " must be an object, got ", obj->dump()));
  }
  const json empty = json::object();
  const json& o = obj != nullptr ? *obj : empty;
  std::string type = "default";
  const auto rt = o.find("rope_type");
  const auto t = o.find("type");  // the name before transformers 4.43
  for (auto it : {t, rt}) {
    if (it == o.end() || it->is_null()) continue;
    if (!it->is_string()) {
      return Bad(internal::Cat("config: ", where, it.key(), " must be a string, got ", it->dump()));
    }
    type = it->get<std::string>();
  }
  if (rt != o.end() && t != o.end() && rt->is_string() && t->is_string() && *rt != *t) {
    return Bad(internal::Cat("config: ", where, "type = ", t->dump(), " and ", where,
                            "rope_type = ", rt->dump(), " disagree"));
  }
  if (opts.phi3) {
    // Phi3Config: "su" and "yarn" are old names of longrope; only default and longrope exist.
    if (type == "su" || type == "yarn") type = "longrope";
    if (type != "default" && type != "longrope") {
      return Bad(internal::Cat("config: ", where, "rope_type = \"", type,
                              "\" is not supported by Phi3ForCausalLM (default, longrope)"));
    }
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
  } else if (type == "dynamic") {
    p.type = RopeType::kDynamic;
    used.insert("factor");
  } else if (type == "yarn") {
    p.type = RopeType::kYarn;
    used.insert({"factor", "original_max_position_embeddings", "attention_factor", "beta_fast",
                 "beta_slow", "mscale", "mscale_all_dim", "truncate"});
  } else if (type == "longrope") {
    p.type = RopeType::kLongrope;
    used.insert({"factor", "original_max_position_embeddings", "attention_factor",
                 "short_factor", "long_factor"});
  } else {
    return Bad(internal::Cat("config: ", where, "rope_type = \"", type,
                            "\" is not supported (supported: default, linear, llama3, dynamic, "
                            "yarn, longrope)"));
  }
  for (const auto& [key, value] : o.items()) {
    if (used.count(key) == 0) {
      return Bad(internal::Cat("config: ", where, key, " = ", value.dump().substr(0, 80),
                              " is not used by rope_type \"", type,
                              "\"; quantd refuses keys it would ignore"));
    }
  }
  if (from_obj) {
    QUANTD_ASSIGN_OR_RETURN(auto theta, Number(o, where, "rope_theta", 0, false, 1e12));
    if (theta) p.theta = *theta;
    QUANTD_ASSIGN_OR_RETURN(auto partial,
                            Number(o, where, "partial_rotary_factor", 0, false, 1 + 1e-9));
    if (partial) p.partial_rotary_factor = *partial;
  }
  if (p.partial_rotary_factor != 1.0 && !opts.allow_partial_rotary) {
    return Bad(internal::Cat("config: ", from_obj ? where : "", "partial_rotary_factor = ",
                            p.partial_rotary_factor,
                            " is not supported for this architecture (RoPE on the whole head "
                            "only; Phi3ForCausalLM rotates part of the head)"));
  }
  if (p.type == RopeType::kDefault) return p;

  // original_max_position_embeddings (llama3, yarn, longrope).
  p.original_max_position_embeddings = opts.max_position_embeddings;
  if (auto it = o.find("original_max_position_embeddings"); it != o.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > (1 << 24)) {
      return Bad(internal::Cat("config: ", where, "original_max_position_embeddings = ",
                              it->dump(), " must be an integer in [1, ", 1 << 24, "]"));
    }
    p.original_max_position_embeddings = static_cast<int>(it->get<int64_t>());
  }
  const bool uses_orig = p.type == RopeType::kLlama3 || p.type == RopeType::kYarn ||
                         p.type == RopeType::kLongrope;
  if (uses_orig && opts.top_original_max_position_embeddings > 0) {
    p.original_max_position_embeddings = opts.top_original_max_position_embeddings;
  }
  if (!uses_orig) p.original_max_position_embeddings = 0;
  const double implicit_factor =
      uses_orig ? double(opts.max_position_embeddings) / p.original_max_position_embeddings : 1.0;

  QUANTD_ASSIGN_OR_RETURN(auto factor, Number(o, where, "factor", 0, false, 1e6));
  if (p.type == RopeType::kLongrope) {
    // transformers 5 takes factor, else max_position_embeddings / original; transformers 4 the
    // ratio only.
    if (factor && *factor != implicit_factor) {
      return Bad(internal::Cat("config: ", where, "factor = ", *factor,
                              " differs from max_position_embeddings / "
                              "original_max_position_embeddings = ", implicit_factor,
                              "; transformers 4 and 5 would compute different attention factors"));
    }
    p.factor = implicit_factor;
    QUANTD_ASSIGN_OR_RETURN(p.short_factor, Factors(o, where, "short_factor"));
    QUANTD_ASSIGN_OR_RETURN(p.long_factor, Factors(o, where, "long_factor"));
    QUANTD_ASSIGN_OR_RETURN(auto att, Number(o, where, "attention_factor", 0, true, 1e3));
    p.attention_factor =
        att ? *att
            : (p.factor <= 1.0 ? 1.0
                               : std::sqrt(1 + std::log(p.factor) /
                                                   std::log(double(p.original_max_position_embeddings))));
    return p;
  }
  if (!factor) {
    return Bad(internal::Cat("config: ", where, "factor is missing (rope_type ", type, ")"));
  }
  p.factor = *factor;
  if (p.type == RopeType::kLinear) return p;
  if (p.factor < 1) {
    return Bad(internal::Cat("config: ", where, "factor = ", p.factor, " must be >= 1 for ", type));
  }
  if (p.type == RopeType::kDynamic) return p;
  if (p.type == RopeType::kYarn) {
    // transformers 4 replaces factor by max_position_embeddings / original when the object
    // names original_max_position_embeddings; 5 keeps factor. Accept only what both agree on.
    if (o.contains("original_max_position_embeddings") && implicit_factor != 1.0 &&
        implicit_factor != p.factor) {
      return Bad(internal::Cat("config: ", where, "factor = ", p.factor,
                              " differs from max_position_embeddings / "
                              "original_max_position_embeddings = ", implicit_factor,
                              "; transformers 4 and 5 would compute different frequencies"));
    }
    QUANTD_ASSIGN_OR_RETURN(auto att, Number(o, where, "attention_factor", 0, true, 1e3));
    QUANTD_ASSIGN_OR_RETURN(auto mscale, Number(o, where, "mscale", 0, true, 1e6));
    QUANTD_ASSIGN_OR_RETURN(auto mscale_all, Number(o, where, "mscale_all_dim", 0, true, 1e6));
    QUANTD_ASSIGN_OR_RETURN(auto fast, Number(o, where, "beta_fast", 0, true, 1e6));
    QUANTD_ASSIGN_OR_RETURN(auto slow, Number(o, where, "beta_slow", 0, true, 1e6));
    if (att) {
      p.attention_factor = *att;
    } else if (mscale && mscale_all && *mscale != 0 && *mscale_all != 0) {
      p.attention_factor = YarnMscale(p.factor, *mscale) / YarnMscale(p.factor, *mscale_all);
    } else {
      p.attention_factor = YarnMscale(p.factor, 1.0);
    }
    // transformers: `get("beta_fast") or 32`: 0 means the default too.
    p.beta_fast = fast && *fast != 0 ? *fast : 32.0;
    p.beta_slow = slow && *slow != 0 ? *slow : 1.0;
    if (auto it = o.find("truncate"); it != o.end() && !it->is_null()) {
      if (!it->is_boolean()) {
        return Bad(internal::Cat("config: ", where, "truncate must be a bool, got ", it->dump()));
      }
      p.truncate = it->get<bool>();
    }
    return p;
  }
  QUANTD_ASSIGN_OR_RETURN(auto low, Number(o, where, "low_freq_factor", 0, false, 1e6));
  QUANTD_ASSIGN_OR_RETURN(auto high, Number(o, where, "high_freq_factor", 0, false, 1e6));
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
  return p;
}

std::string Describe(const RopeParams& p) {
  std::string s = internal::Cat("rope_type ", RopeTypeName(p.type), ", rope_theta ", p.theta);
  if (p.partial_rotary_factor != 1.0) {
    s += internal::Cat(", partial_rotary_factor ", p.partial_rotary_factor);
  }
  if (p.type != RopeType::kDefault) s += internal::Cat(", factor ", p.factor);
  if (p.type == RopeType::kLlama3) {
    s += internal::Cat(", low_freq_factor ", p.low_freq_factor, ", high_freq_factor ",
                       p.high_freq_factor);
  }
  if (p.original_max_position_embeddings != 0) {
    s += internal::Cat(", original_max_position_embeddings ", p.original_max_position_embeddings);
  }
  if (p.type == RopeType::kYarn) {
    s += internal::Cat(", beta_fast ", p.beta_fast, ", beta_slow ", p.beta_slow, ", truncate ",
                       p.truncate ? "true" : "false");
  }
  if (p.attention_factor != 1.0) s += internal::Cat(", attention_factor ", p.attention_factor);
  if (p.type == RopeType::kLongrope) {
    s += internal::Cat(", ", p.short_factor.size(), " short / ", p.long_factor.size(),
                       " long factors");
  }
  return s;
}

}  // namespace

bool RopeParams::operator==(const RopeParams& o) const {
  return type == o.type && theta == o.theta && factor == o.factor &&
         low_freq_factor == o.low_freq_factor && high_freq_factor == o.high_freq_factor &&
         original_max_position_embeddings == o.original_max_position_embeddings &&
         partial_rotary_factor == o.partial_rotary_factor &&
         attention_factor == o.attention_factor && beta_fast == o.beta_fast &&
         beta_slow == o.beta_slow && truncate == o.truncate && short_factor == o.short_factor &&
         long_factor == o.long_factor;
}

std::string_view RopeTypeName(RopeType t) {
  switch (t) {
    case RopeType::kLinear:
      return "linear";
    case RopeType::kLlama3:
      return "llama3";
    case RopeType::kDynamic:
      return "dynamic";
    case RopeType::kYarn:
      return "yarn";
    case RopeType::kLongrope:
      return "longrope";
    case RopeType::kDefault:
      break;
  }
  return "default";
}

absl::StatusOr<RopeParams> ParseRopeParams(const json& config, const RopeParseOptions& opts) {
  auto present = [&](const char* key) -> const json* {
    auto it = config.find(key);
    return it == config.end() || it->is_null() ? nullptr : &*it;
  };
  const json* params = present("rope_parameters");
  const json* scaling = present("rope_scaling");
  QUANTD_ASSIGN_OR_RETURN(std::optional<double> top_theta,
                          Number(config, "", "rope_theta", 0, false, 1e12));
  // A top-level partial_rotary_factor is moved into the RoPE object by transformers 5 (unless
  // the object has its own) and read directly by transformers 4.
  QUANTD_ASSIGN_OR_RETURN(auto top_partial,
                          Number(config, "", "partial_rotary_factor", 0, false, 1 + 1e-9));
  // transformers 5: a non-empty rope_scaling replaces rope_parameters.
  const bool scaling_wins = scaling != nullptr && !(scaling->is_object() && scaling->empty());
  const json* v5_obj = scaling_wins ? scaling : params;
  const std::string v5_where = scaling_wins ? "rope_scaling." : "rope_parameters.";
  QUANTD_ASSIGN_OR_RETURN(RopeParams v5,
                          Read(v5_obj, v5_where, true, top_theta, top_partial, opts));
  struct Reading {
    const char* who;
    RopeParams p;
  };
  std::vector<Reading> others;
  if (top_theta || scaling != nullptr) {  // transformers 4 reads only the old keys
    QUANTD_ASSIGN_OR_RETURN(RopeParams v4, Read(scaling, "rope_scaling.", false, top_theta,
                                                top_partial, opts));
    others.push_back({"transformers 4 (rope_theta, rope_scaling)", v4});
  }
  if (params != nullptr && scaling_wins) {  // what the user may have meant by rope_parameters
    QUANTD_ASSIGN_OR_RETURN(RopeParams own, Read(params, "rope_parameters.", true, top_theta,
                                                 top_partial, opts));
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

int RotaryDim(const RopeParams& p, int head_dim) {
  // transformers: int(head_dim * partial_rotary_factor), a float product truncated.
  return static_cast<int>(static_cast<double>(head_dim) * p.partial_rotary_factor);
}

absl::Status CheckRopeForHead(const RopeParams& p, int head_dim) {
  const int dim = RotaryDim(p, head_dim);
  if (dim < 2 || dim % 2 != 0) {
    return Bad(internal::Cat("config: head_dim ", head_dim, " x partial_rotary_factor ",
                            p.partial_rotary_factor, " gives ", dim,
                            " rotated dims; they must be even and at least 2"));
  }
  if (p.type == RopeType::kLongrope) {
    for (const auto& [name, v] : {std::pair{"short_factor", &p.short_factor},
                                  std::pair{"long_factor", &p.long_factor}}) {
      if (static_cast<int>(v->size()) != dim / 2) {
        return Bad(internal::Cat("config: rope ", name, " has ", v->size(),
                                " entries; the ", dim, " rotated dims of a head need ", dim / 2));
      }
    }
  }
  return absl::OkStatus();
}

bool RopeUsesLongFactors(const RopeParams& p, int seq_len) {
  return p.type == RopeType::kLongrope && seq_len > p.original_max_position_embeddings;
}

std::vector<float> RopeInverseFrequencies(const RopeParams& p, int head_dim, int seq_len) {
  const int dim = RotaryDim(p, head_dim);
  const int half = dim / 2;
  std::vector<float> out(half);
  constexpr double kPi = 3.14159265358979323846;
  // YaRN's correction range [low, high] of pair indices (transformers' find_correction_range).
  double low = 0, high = 0;
  if (p.type == RopeType::kYarn) {
    auto correction_dim = [&](double rotations) {
      return dim * std::log(p.original_max_position_embeddings / (rotations * 2 * kPi)) /
             (2 * std::log(p.theta));
    };
    low = correction_dim(p.beta_fast);
    high = correction_dim(p.beta_slow);
    if (p.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, double(dim - 1));
    if (low == high) high += 0.001;  // transformers: prevents a singular ramp
  }
  const bool long_factors = RopeUsesLongFactors(p, seq_len);
  for (int i = 0; i < half; ++i) {
    const double pos = std::pow(p.theta, (2.0 * i) / dim);
    double f = 1.0 / pos;
    switch (p.type) {
      case RopeType::kDefault:
      case RopeType::kDynamic:  // == default up to max_position_embeddings
        break;
      case RopeType::kLinear:
        f /= p.factor;
        break;
      case RopeType::kLlama3: {
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
        break;
      }
      case RopeType::kYarn: {
        // Pairs below `low` keep their frequency (extrapolation), above `high` are divided by
        // factor (interpolation), linear in between.
        const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
        const double extrapolation = 1.0 - ramp;
        f = f / p.factor * (1 - extrapolation) + f * extrapolation;
        break;
      }
      case RopeType::kLongrope:
      {
        const std::vector<double>& ext = long_factors ? p.long_factor : p.short_factor;
        f = 1.0 / ((static_cast<size_t>(i) < ext.size() ? ext[i] : 1.0) * pos);
      }
        break;
    }
    out[i] = static_cast<float>(f);
  }
  return out;
}

}  // namespace quantd::model

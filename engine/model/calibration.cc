#include "engine/model/calibration.h"

#include <algorithm>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/tokenizer/tokenizer_hf.h"
#include "nlohmann/json.hpp"

namespace quantd::model {

absl::StatusOr<CalibSampling> ParseCalibSampling(std::string_view s) {
  if (s == "first") return CalibSampling::kFirst;
  if (s == "random") return CalibSampling::kRandom;
  return absl::InvalidArgumentError(absl::StrCat("unknown calibration sampling \"", std::string(s),
                                                 "\": expected \"first\" or \"random\""));
}

std::string_view CalibSamplingName(CalibSampling s) {
  return s == CalibSampling::kRandom ? "random" : "first";
}

absl::StatusOr<std::vector<int32_t>> CalibrationWindows(absl::Span<const int32_t> stream,
                                                        const CalibWindowOptions& opts) {
  if (opts.seq_len < 2) {
    return absl::InvalidArgumentError(absl::StrCat("calibration seq_len ", opts.seq_len, " < 2"));
  }
  const bool start = opts.start_token >= 0;
  const int64_t w = opts.seq_len - (start ? 1 : 0);  // stream tokens per window
  const int64_t n = static_cast<int64_t>(stream.size());
  if (n < w) {
    return absl::InvalidArgumentError(absl::StrCat("calibration data has ", n,
                                                   " tokens, fewer than one sequence of ", w,
                                                   start ? " (plus the start token)" : ""));
  }
  std::vector<int64_t> starts;
  if (opts.sampling == CalibSampling::kFirst) {
    int64_t count = n / w;
    if (opts.max_seqs > 0) count = std::min(count, opts.max_seqs);
    for (int64_t i = 0; i < count; ++i) starts.push_back(i * w);
  } else {
    if (opts.max_seqs <= 0) {
      return absl::InvalidArgumentError(
          "random calibration sampling needs a number of sequences (max_calib_seqs > 0)");
    }
    // mt19937_64's output is fixed by the standard (unlike the distributions), so the windows
    // are the same on every platform; the modulo bias is below 2^-40 for any real stream.
    std::mt19937_64 rng(opts.seed);
    const uint64_t range = static_cast<uint64_t>(n - w) + 1;
    for (int64_t i = 0; i < opts.max_seqs; ++i) starts.push_back(static_cast<int64_t>(rng() % range));
  }
  std::vector<int32_t> out;
  out.reserve(starts.size() * opts.seq_len);
  for (int64_t b : starts) {
    if (start) out.push_back(opts.start_token);
    out.insert(out.end(), stream.begin() + b, stream.begin() + b + w);
  }
  return out;
}

absl::StatusOr<int32_t> StartTokenOf(const Tokenizer& tok) {
  QUANTD_ASSIGN_OR_RETURN(std::vector<int32_t> with, tok.Encode("a", /*bos=*/true));
  QUANTD_ASSIGN_OR_RETURN(std::vector<int32_t> without, tok.Encode("a", /*bos=*/false));
  // A start token is one id in front of the plain encoding (an EOS the template may append
  // after it is not one).
  if (with.size() > without.size() &&
      std::equal(without.begin(), without.end(), with.begin() + 1)) {
    return with.front();
  }
  return -1;
}

absl::StatusOr<int32_t> ServingStartToken(const std::string& model_dir) {
  const std::string tj = JoinPath(model_dir, "tokenizer.json");
  if (!std::filesystem::exists(tj)) return -1;
  const std::string tc = JoinPath(model_dir, "tokenizer_config.json");
  if (std::filesystem::exists(tc)) {
    QUANTD_ASSIGN_OR_RETURN(std::string text, ReadFile(tc, uint64_t{64} << 20));
    const nlohmann::json c = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (c.is_discarded() || !c.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(tc, " is not a JSON object"));
    }
    auto it = c.find("add_bos_token");
    if (it != c.end() && it->is_boolean() && !it->get<bool>()) return -1;
  }
  QUANTD_ASSIGN_OR_RETURN(auto tok, HfTokenizer::Load(tj));
  return StartTokenOf(*tok);
}

}  // namespace quantd::model

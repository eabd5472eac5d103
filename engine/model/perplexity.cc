#include "engine/model/perplexity.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/str_util.h"
#include "common/status_macros.h"
#include "engine/model/forward.h"
#include "engine/model/streamed_forward.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::model {

namespace {

struct Window {
  int64_t begin, end, score_from;
};

// Validates the options and cuts the (possibly truncated) stream into windows.
absl::StatusOr<std::vector<Window>> MakeWindows(const LlamaConfig& cfg,
                                                absl::Span<const int32_t>* tokens,
                                                const PerplexityOptions& opts) {
  if (opts.context < 1 || opts.context > cfg.max_position_embeddings) {
    return absl::InvalidArgumentError(internal::Cat("perplexity: context ", opts.context,
                                                   " outside [1, max_position_embeddings=",
                                                   cfg.max_position_embeddings, "]"));
  }
  const int stride = opts.stride == 0 ? opts.context : opts.stride;
  if (stride < 1 || stride > opts.context) {
    return absl::InvalidArgumentError(
        internal::Cat("perplexity: stride ", opts.stride, " outside [0, context=", opts.context, "]"));
  }
  if (opts.max_tokens < 0) {
    return absl::InvalidArgumentError(
        internal::Cat("perplexity: max_tokens ", opts.max_tokens, " is negative"));
  }
  if (opts.max_tokens > 0 && static_cast<size_t>(opts.max_tokens) < tokens->size()) {
    *tokens = tokens->subspan(0, opts.max_tokens);
  }
  if (tokens->size() < 2) {
    return absl::InvalidArgumentError(
        internal::Cat("perplexity: need at least 2 tokens, got ", tokens->size()));
  }
  QUANTD_RETURN_IF_ERROR(ValidateTokens(*tokens, cfg.vocab_size));
  std::vector<Window> windows;
  const int64_t E = static_cast<int64_t>(tokens->size()) - 1;
  int64_t prev_end = 0;
  for (int64_t b = 0; prev_end < E; b += stride) {
    const int64_t e = std::min<int64_t>(b + opts.context, E);
    windows.push_back({b, e, std::max(b, prev_end)});
    prev_end = e;
  }
  return windows;
}

PerplexityResult Finish(double total, int64_t targets, int windows) {
  PerplexityResult r;
  r.targets = targets;
  r.windows = windows;
  r.mean_nll = total / static_cast<double>(targets);
  r.ppl = std::exp(r.mean_nll);
  return r;
}

}  // namespace

absl::StatusOr<PerplexityResult> Perplexity(const LlamaConfig& cfg, const LlamaWeights& w,
                                            absl::Span<const int32_t> tokens,
                                            const PerplexityOptions& opts) {
  QUANTD_ASSIGN_OR_RETURN(std::vector<Window> windows, MakeWindows(cfg, &tokens, opts));
  const int64_t E = static_cast<int64_t>(tokens.size()) - 1;

  const int n = static_cast<int>(windows.size());
  std::vector<double> nll(n, 0.0);
  std::vector<absl::Status> status(n);
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < n; ++i) {
    const Window& win = windows[i];
    auto logits = Forward(cfg, w, tokens.subspan(win.begin, win.end - win.begin));
    if (!logits.ok()) {
      status[i] = logits.status();
      continue;
    }
    double sum = 0;
    for (int64_t p = win.score_from; p < win.end; ++p) {
      const auto row = logits->row(p - win.begin);
      const float mx = row.maxCoeff();
      // exp in fp32 (vectorized), accumulation and log in fp64.
      const double z = (row.array() - mx).exp().template cast<double>().sum();
      sum += std::log(z) + static_cast<double>(mx) - static_cast<double>(row[tokens[p + 1]]);
    }
    nll[i] = sum;
  }
  double total = 0;
  for (int i = 0; i < n; ++i) {
    QUANTD_RETURN_IF_ERROR(status[i]);
    total += nll[i];
  }
  return Finish(total, E, n);
}

absl::StatusOr<PerplexityResult> Perplexity(const LlamaConfig& cfg, WeightSource& src,
                                            absl::Span<const int32_t> tokens,
                                            const PerplexityOptions& opts) {
  QUANTD_ASSIGN_OR_RETURN(std::vector<Window> windows, MakeWindows(cfg, &tokens, opts));
  if (opts.batch_tokens < 0) {
    return absl::InvalidArgumentError(
        internal::Cat("perplexity: batch_tokens ", opts.batch_tokens, " is negative"));
  }
  const int64_t batch_tokens =
      opts.batch_tokens > 0 ? opts.batch_tokens : AutoBatchTokens(cfg, opts.context);
  const int64_t E = static_cast<int64_t>(tokens.size()) - 1;
  const int n = static_cast<int>(windows.size());
  double total = 0;
  for (int first = 0; first < n;) {
    // One pass: windows [first, last) while their tokens fit batch_tokens.
    int last = first;
    int64_t rows = 0;
    std::vector<absl::Span<const int32_t>> seqs;
    while (last < n && (last == first || rows + (windows[last].end - windows[last].begin) <=
                                             batch_tokens)) {
      const Window& win = windows[last++];
      seqs.push_back(tokens.subspan(win.begin, win.end - win.begin));
      rows += win.end - win.begin;
    }
    std::vector<int32_t> targets;
    targets.reserve(rows);
    for (int i = first; i < last; ++i) {
      const Window& win = windows[i];
      for (int64_t p = win.begin; p < win.end; ++p) {
        targets.push_back(p >= win.score_from ? tokens[p + 1] : -1);
      }
    }
    QUANTD_ASSIGN_OR_RETURN(MatrixF hidden, ForwardBatch(cfg, src, seqs));
    QUANTD_ASSIGN_OR_RETURN(std::vector<double> nll, RowNll(cfg, src, hidden, targets));
    // Window order, then position order: each window's sum first, as the reference does.
    int64_t r = 0;
    for (int i = first; i < last; ++i) {
      double sum = 0;
      for (int64_t p = windows[i].begin; p < windows[i].end; ++p, ++r) sum += nll[r];
      total += sum;
    }
    first = last;
  }
  return Finish(total, E, n);
}

}  // namespace quantd::model

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
  // Stream tokens per window: one position goes to the start token when there is one.
  const int span = opts.context - (opts.start_token >= 0 ? 1 : 0);
  if (span < 1) {
    return absl::InvalidArgumentError(
        internal::Cat("perplexity: context ", opts.context, " leaves no room after the start token"));
  }
  if (opts.start_token >= cfg.vocab_size) {
    return absl::InvalidArgumentError(internal::Cat("perplexity: start token ", opts.start_token,
                                                   " outside the vocabulary of ", cfg.vocab_size));
  }
  const int stride = opts.stride == 0 ? span : opts.stride;
  if (stride < 1 || stride > span) {
    return absl::InvalidArgumentError(
        internal::Cat("perplexity: stride ", opts.stride, " outside [0, ", span, "]"));
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
    const int64_t e = std::min<int64_t>(b + span, E);
    windows.push_back({b, e, std::max(b, prev_end)});
    prev_end = e;
  }
  return windows;
}

// The forward input of a window: [start] + s[begin : end], or the slice itself.
std::vector<int32_t> WindowInput(absl::Span<const int32_t> tokens, const Window& win,
                                 int32_t start_token) {
  std::vector<int32_t> in;
  in.reserve(win.end - win.begin + 1);
  if (start_token >= 0) in.push_back(start_token);
  in.insert(in.end(), tokens.begin() + win.begin, tokens.begin() + win.end);
  return in;
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
    const std::vector<int32_t> in = WindowInput(tokens, win, opts.start_token);
    const int64_t shift = opts.start_token >= 0 ? 1 : 0;  // logits row of stream position p
    auto logits = Forward(cfg, w, in);
    if (!logits.ok()) {
      status[i] = logits.status();
      continue;
    }
    double sum = 0;
    for (int64_t p = win.score_from; p < win.end; ++p) {
      const auto row = logits->row(p - win.begin + shift);
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
    std::vector<std::vector<int32_t>> inputs;
    const int64_t extra = opts.start_token >= 0 ? 1 : 0;
    while (last < n && (last == first || rows + (windows[last].end - windows[last].begin + extra) <=
                                             batch_tokens)) {
      const Window& win = windows[last++];
      inputs.push_back(WindowInput(tokens, win, opts.start_token));
      rows += win.end - win.begin + extra;
    }
    std::vector<absl::Span<const int32_t>> seqs(inputs.begin(), inputs.end());
    std::vector<int32_t> targets;
    targets.reserve(rows);
    for (int i = first; i < last; ++i) {
      const Window& win = windows[i];
      if (extra) targets.push_back(-1);  // the start token's row
      for (int64_t p = win.begin; p < win.end; ++p) {
        targets.push_back(p >= win.score_from ? tokens[p + 1] : -1);
      }
    }
    QUANTD_ASSIGN_OR_RETURN(MatrixF hidden, ForwardBatch(cfg, src, seqs, nullptr, opts.ops));
    QUANTD_ASSIGN_OR_RETURN(std::vector<double> nll,
                            RowNll(cfg, src, hidden, targets, 0, opts.ops));
    // Window order, then position order: each window's sum first, as the reference does.
    int64_t r = 0;
    for (int i = first; i < last; ++i) {
      double sum = 0;
      r += extra;  // the start token's row scores nothing
      for (int64_t p = windows[i].begin; p < windows[i].end; ++p, ++r) sum += nll[r];
      total += sum;
    }
    first = last;
  }
  return Finish(total, E, n);
}

}  // namespace quantd::model

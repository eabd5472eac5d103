#include "client/eval_command.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "common/file_util.h"
#include "engine/artifact/artifact.h"
#include "engine/model/forward.h"
#include "engine/model/streamed_forward.h"
#include "engine/model/perplexity.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::client {
namespace {

absl::StatusOr<std::vector<int32_t>> EncodeTextFile(const std::string& dir, const std::string& path) {
  auto tok = model::LoadTokenizerForModel(dir);
  if (!tok.ok()) return tok.status();
  auto text = ReadFile(path, uint64_t{1} << 30);
  if (!text.ok()) return text.status();
  return model::EncodeDocuments(**tok, *text);
}

}  // namespace

int RunEvalCommand(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  std::string dir, data, logits_out;
  int context = 512;
  bool json = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string* v) {
      if (i + 1 >= args.size()) return false;
      *v = args[++i];
      return true;
    };
    std::string v;
    if (a == "--data") {
      if (!value(&data)) break;
    } else if (a == "--context") {
      if (!value(&v) || !absl::SimpleAtoi(v, &context) || context < 2) {
        err << "quantctl: --context needs an integer >= 2\n";
        return 2;
      }
    } else if (a == "--logits-out") {
      if (!value(&logits_out)) break;
    } else if (a == "--json") {
      json = true;
    } else if (!a.empty() && a[0] != '-' && dir.empty()) {
      dir = a;
    } else {
      err << "quantctl: eval: unexpected argument '" << a << "'\n";
      return 2;
    }
  }
  if (dir.empty() || data.empty()) {
    err << "usage: quantctl eval MODEL_DIR --data TOKENS|TEXT.txt [--context N] [--json] [--logits-out FILE]\n";
    return 2;
  }
  // Layer-streamed: one layer's weights in memory at a time (a 7B model fits a laptop).
  model::LlamaConfig cfg;
  auto src = artifact::OpenArtifactSource(dir, &cfg);
  if (!src.ok()) {
    err << "quantctl: " << src.status().ToString() << "\n";
    return 1;
  }
  // A .txt file goes through the directory's tokenizer exactly as SubmitJob encodes text data.
  auto tokens = absl::EndsWith(data, ".txt") ? EncodeTextFile(dir, data) : model::LoadTokenFile(data);
  if (!tokens.ok()) {
    err << "quantctl: " << tokens.status().ToString() << "\n";
    return 1;
  }
  if (!logits_out.empty()) {
    // The logits of the first window, [T x vocab] little-endian f32: for comparing our forward
    // pass with another implementation (tests/hf_transformers_test.py).
    const size_t t = std::min<size_t>(tokens->size(), static_cast<size_t>(context));
    const std::vector<absl::Span<const int32_t>> window = {absl::MakeConstSpan(tokens->data(), t)};
    auto logits = model::ForwardBatchLogits(cfg, **src, window);
    if (!logits.ok()) {
      err << "quantctl: " << logits.status().ToString() << "\n";
      return 1;
    }
    std::string bytes(reinterpret_cast<const char*>(logits->data()), logits->size() * sizeof(float));
    if (absl::Status st = WriteFileAtomic(logits_out, bytes); !st.ok()) {
      err << "quantctl: " << st.ToString() << "\n";
      return 1;
    }
  }
  model::PerplexityOptions opts;
  opts.context = context;
  auto p = model::Perplexity(cfg, **src, *tokens, opts);
  if (!p.ok()) {
    err << "quantctl: " << p.status().ToString() << "\n";
    return 1;
  }
  char buf[256];
  if (json) {
    std::snprintf(buf, sizeof(buf),
                  "{\"ppl\": %.6f, \"mean_nll\": %.8f, \"targets\": %lld, \"context\": %d}\n",
                  p->ppl, p->mean_nll, static_cast<long long>(p->targets), context);
  } else {
    std::snprintf(buf, sizeof(buf), "perplexity %.4f (mean NLL %.6f over %lld targets, context %d)\n",
                  p->ppl, p->mean_nll, static_cast<long long>(p->targets), context);
  }
  out << buf;
  return 0;
}

}  // namespace quantd::client

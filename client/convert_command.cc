#include "client/convert_command.h"

#include "engine/model/gguf_convert.h"

namespace quantd::client {

int RunConvertGgufCommand(const std::vector<std::string>& args, std::ostream& out,
                          std::ostream& err) {
  constexpr const char* kUsage =
      "usage: quantctl convert-gguf IN.gguf -o DIR [--dtype f16|bf16|f32]\n";
  std::string in, dir;
  model::GgufConvertOptions opts;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if ((a == "-o" || a == "--out") && i + 1 < args.size()) {
      dir = args[++i];
    } else if (a == "--dtype" && i + 1 < args.size()) {
      const std::string& d = args[++i];
      if (d == "f16") {
        opts.dtype = model::DType::kF16;
      } else if (d == "bf16") {
        opts.dtype = model::DType::kBF16;
      } else if (d == "f32") {
        opts.dtype = model::DType::kF32;
      } else {
        err << "quantctl: --dtype must be f16, bf16 or f32, got '" << d << "'\n";
        return 2;
      }
    } else if (!a.empty() && a[0] != '-' && in.empty()) {
      in = a;
    } else {
      err << "quantctl: convert-gguf: unexpected argument '" << a << "'\n" << kUsage;
      return 2;
    }
  }
  if (in.empty() || dir.empty()) {
    err << kUsage;
    return 2;
  }
  auto s = model::ConvertGgufToHf(in, dir, opts);
  if (!s.ok()) {
    err << "quantctl: " << s.status().ToString() << "\n";
    return 1;
  }
  const model::LlamaConfig& c = s->config;
  out << "wrote " << dir << ": " << s->tensors << " tensors, " << s->parameters
      << " parameters (hidden " << c.hidden_size << ", " << c.num_layers << " layers, "
      << c.num_heads << " heads / " << c.num_kv_heads << " kv, mlp " << c.intermediate_size
      << ", vocab " << c.vocab_size << (c.tie_word_embeddings ? ", tied embeddings" : "")
      << ")\n";
  return 0;
}

}  // namespace quantd::client

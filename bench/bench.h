// The quantd-bench subcommands. Each runs one measurement, prints one JSON object per line on
// stdout and returns a process exit code (0 ok, 2 bad flags, 1 failure).
// Thread-safety: run from main() only.
#ifndef QUANTD_BENCH_BENCH_H_
#define QUANTD_BENCH_BENCH_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <cstdio>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/quant/device.h"
#include "nlohmann/json.hpp"

namespace quantd::bench {

// --key value pairs after the subcommand.
class Flags {
 public:
  // INVALID_ARGUMENT for a flag without a value or not starting with "--".
  static absl::StatusOr<Flags> Parse(int argc, char** argv, int first);
  bool Has(const std::string& key) const { return values_.count(key) > 0; }
  std::string Get(const std::string& key, const std::string& def) const;
  // INVALID_ARGUMENT when present but not a number.
  absl::StatusOr<long long> GetInt(const std::string& key, long long def) const;
  absl::StatusOr<double> GetDouble(const std::string& key, double def) const;

 private:
  std::map<std::string, std::string> values_;
};

// The Device `--device` names (cpu, auto, cuda:N; default cpu); nullptr after printing the
// reason to stderr.
std::unique_ptr<quant::Device> DeviceFromFlags(const Flags& flags);

// Prints `s` on stderr; returns 1, the failure exit code.
inline int Fail(const absl::Status& s) {
  std::fprintf(stderr, "%s\n", s.ToString().c_str());
  return 1;
}

// Prints `line` as one JSON line on stdout, flushed (a long run's lines show as they come).
inline void PrintLine(const nlohmann::json& line) {
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
}

inline double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// quantd-bench codebook --codebook {scalar2,e8p,rvq3,rvq4} --samples N [--scale S]
int RunCodebook(const Flags& flags);
// quantd-bench hessian --n 4096 --tokens 8192 [--device cpu|auto|cuda:N] (default cpu)
int RunHessian(const Flags& flags);
// quantd-bench layer --method {rtn,gptq,quip,quip-sharp,qtip} --bits B --m 4096 --n 4096
//                    [--device cpu|auto|cuda:N] (default cpu)
int RunLayer(const Flags& flags);
// quantd-bench forward --model DIR [--tokens N] [--context T] [--threads P] [--data TOKENS]
//                      [--mode batched|reference]
int RunForward(const Flags& flags);
// quantd-bench synth --shape {llama2-7b,tinyllama-1.1b,tiny} --out DIR [--layers N]
//                    [--shard-gb 4] [--seed 0] (bench_synth.cc)
int RunSynth(const Flags& flags);
// quantd-bench methods --model DIR --calib F --eval F [--configs rtn/2,...] (bench_methods.cc)
int RunMethods(const Flags& flags);
// quantd-bench finetune --model FP_DIR --artifact ART_DIR --calib F --eval F [--epochs 5] ...
// (bench_finetune.cc)
int RunFinetune(const Flags& flags);
// quantd-bench block-grad --model DIR [--layer 0] [--tokens 16] [--seed 1] [--kl 0|1]: one
// block's (or, --kl 1, the whole model's KL) fp64 gradients as JSON, for the torch autograd cross-check (bench_block_grad.cc)
int RunBlockGrad(const Flags& flags);
// quantd-bench tokenize --model DIR --text FILE [--bytes N] (bench_tokenize.cc)
int RunTokenize(const Flags& flags);

// Token ids from a .u16/.u32/.npy file, or a .txt file encoded whole with `model_dir`'s
// tokenizer and no BOS (the GPTQ WikiText-2 convention: the text is one stream).
absl::StatusOr<std::vector<int32_t>> LoadBenchTokens(const std::string& path,
                                                     const std::string& model_dir);

}  // namespace quantd::bench

#endif  // QUANTD_BENCH_BENCH_H_

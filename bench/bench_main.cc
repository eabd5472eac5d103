// quantd-bench: parses the subcommand and its flags and calls bench/*.cc.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"
#include "bench/bench.h"
#include "engine/device/device_registry.h"

namespace quantd::bench {

absl::StatusOr<Flags> Flags::Parse(int argc, char** argv, int first) {
  Flags f;
  for (int i = first; i < argc; i += 2) {
    const std::string key = argv[i];
    if (key.rfind("--", 0) != 0 || i + 1 >= argc) {
      return absl::InvalidArgumentError("expected --flag value, got \"" + key + "\"");
    }
    f.values_[key.substr(2)] = argv[i + 1];
  }
  return f;
}

std::string Flags::Get(const std::string& key, const std::string& def) const {
  auto it = values_.find(key);
  return it == values_.end() ? def : it->second;
}

absl::StatusOr<long long> Flags::GetInt(const std::string& key, long long def) const {
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v)) {
    return absl::InvalidArgumentError("--" + key + " must be an integer, got " + it->second);
  }
  return static_cast<long long>(v);
}

absl::StatusOr<double> Flags::GetDouble(const std::string& key, double def) const {
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  double v;
  if (!absl::SimpleAtod(it->second, &v)) {
    return absl::InvalidArgumentError("--" + key + " must be a number, got " + it->second);
  }
  return v;
}

std::unique_ptr<quant::Device> DeviceFromFlags(const Flags& flags) {
  const std::string device = flags.Get("device", "cpu");
  absl::StatusOr<std::unique_ptr<quant::Device>> made = device::MakeDevice(device);
  if (!made.ok()) {
    std::fprintf(stderr, "--device %s: %s\n", device.c_str(), made.status().ToString().c_str());
    return nullptr;
  }
  return *std::move(made);
}

}  // namespace quantd::bench

int main(int argc, char** argv) {
  using quantd::bench::Flags;
  const char* usage =
      "usage: quantd-bench codebook --codebook {scalar2,e8p,rvq3,rvq4} --samples N [--scale S]\n"
      "       quantd-bench hessian --n 4096 --tokens 8192 [--device cpu|auto|cuda:N]\n"
      "       quantd-bench layer --method {rtn,gptq,quip,quip-sharp,qtip} --bits B --m 4096 --n 4096\n"
      "                          [--device cpu|auto|cuda:N]\n"
      "       quantd-bench forward --model DIR [--tokens N] [--context T] [--threads P] [--data TOKENS]\n"
      "                            [--mode batched|reference]\n"
      "       quantd-bench synth --shape {llama2-7b,tinyllama-1.1b,tiny} --out DIR [--layers N]\n"
      "                          [--shard-gb 4] [--seed 0]\n"
      "       quantd-bench methods --model DIR --calib F --eval F [--configs rtn/2,gptq/4/g64,...]\n"
      "                            [--calib-seqs 16] [--seq-len 512] [--eval-tokens 8192]\n"
      "                            [--trellis-l 16] [--group-size 0] [--mse-clip 0|1]\n"
      "                            [--act-order 0|1] [--sequential 0|1] [--damp 0.01]\n"
      "       quantd-bench finetune --model FP_DIR --artifact ART_DIR --calib F --eval F\n"
      "                             [--calib-seqs 16] [--seq-len 512] [--eval-tokens 8192]\n"
      "                             [--epochs 5] [--lr 1e-3] [--batch 2] [--holdout 2] [--patience 1]\n"
      "                             [--save DIR] [--block 1] [--e2e 0|1 [--e2e-epochs 3]\n"
      "                             [--e2e-lr 1e-3] [--e2e-head 0|1]] [--device cpu|cuda:N]\n"
      "       quantd-bench block-grad --model DIR [--layer 0] [--tokens 16] [--seed 1] [--kl 0|1]\n"
      "                               [--device cpu|cuda:N]\n"
      "       quantd-bench tokenize --model DIR --text FILE [--bytes N]\n";
  if (argc < 2) {
    std::fputs(usage, stderr);
    return 2;
  }
  absl::StatusOr<Flags> flags = Flags::Parse(argc, argv, 2);
  if (!flags.ok()) {
    std::fprintf(stderr, "%s\n%s", std::string(flags.status().message()).c_str(), usage);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "codebook") return quantd::bench::RunCodebook(*flags);
  if (cmd == "hessian") return quantd::bench::RunHessian(*flags);
  if (cmd == "layer") return quantd::bench::RunLayer(*flags);
  if (cmd == "forward") return quantd::bench::RunForward(*flags);
  if (cmd == "synth") return quantd::bench::RunSynth(*flags);
  if (cmd == "methods") return quantd::bench::RunMethods(*flags);
  if (cmd == "finetune") return quantd::bench::RunFinetune(*flags);
  if (cmd == "block-grad") return quantd::bench::RunBlockGrad(*flags);
  if (cmd == "tokenize") return quantd::bench::RunTokenize(*flags);
  std::fputs(usage, stderr);
  return 2;
}

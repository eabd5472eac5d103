// quantd-bench finetune: block-wise fine-tuning (engine/model/finetune.h) of a quantized native
// artifact (e.g. one written by `quantd-bench methods --save`) against its fp model, with the
// perplexity before and after on the same evaluation tokens. Prints one JSON line with the
// perplexity before, one per tuned block (held-out loss before, per epoch, kept), and one with
// the perplexity after, the fine-tuning time and the process's peak RSS. --save DIR writes the
// tuned model as a quantd_format 2 artifact (the source's packed matrices, the tuned norms and
// each linear's real scales; docs/formats/artifact.md) and reports its reloaded perplexity.
// --e2e 1 adds the end-to-end KL stage (engine/model/finetune_e2e.h) after the block stage
// (--block 0 skips the block stage): one JSON line per epoch (held-out KL) and the perplexity
// after each stage; --e2e-epochs, --e2e-lr, --e2e-head 0|1 (tune an untied head) set it up.
// --device cpu|cuda:N (default cpu) runs both stages' backward ops on that device
// (model/backward_device.h); the forwards and the perplexities stay on the CPU.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>

#include <filesystem>
#include <map>

#include "bench/bench.h"
#include "common/file_util.h"
#include "engine/artifact/artifact.h"
#include "engine/format/checkpoint.h"
#include "engine/model/finetune.h"
#include "engine/model/finetune_e2e.h"
#include "engine/model/perplexity.h"
#include "nlohmann/json.hpp"

namespace quantd::bench {
namespace {

double PeakRssMiB() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// Writes `dir` (created): model.safetensors from the tuned weights `q` with the source
// artifact's packed matrices and each one's tuned scales, and every other file of `src_dir`
// (config, tokenizer, manifest) copied.
absl::Status SaveTuned(const model::LlamaConfig& cfg, const model::LlamaWeights& q,
                       const std::vector<model::LayerScales>& scales, const std::string& src_dir,
                       const std::string& dir) {
  auto ckpt = model::Checkpoint::Open(src_dir);
  if (!ckpt.ok()) return ckpt.status();
  std::map<std::string, std::string> packed;
  std::map<std::string, artifact::RealScales> real;
  for (int l = 0; l < cfg.num_layers; ++l) {
    for (model::Linear lin : model::kAllLinears) {
      const std::string name = model::LinearTensorName(l, lin);
      auto v = (*ckpt)->Get(artifact::QuantizedTensorName(name));
      if (!v.ok()) continue;  // stored dense: q already holds the tuned matrix
      packed[name] = std::string(v->data);
      const int i = static_cast<int>(lin);
      real[name] = {scales[l].out[i], scales[l].in[i]};
    }
  }
  if (absl::Status st = MakeDirs(dir); !st.ok()) return st;
  for (const auto& e : std::filesystem::directory_iterator(src_dir)) {
    const std::string f = e.path().filename().string();
    if (!e.is_regular_file() || f == "model.safetensors") continue;
    auto bytes = ReadFile(e.path().string(), uint64_t{1} << 30);
    if (!bytes.ok()) return bytes.status();
    if (absl::Status st = WriteFileAtomic(JoinPath(dir, f), *bytes); !st.ok()) return st;
  }
  return artifact::WriteArtifactFromWeights(cfg, q, packed, JoinPath(dir, "model.safetensors"),
                                            real);
}

}  // namespace

int RunFinetune(const Flags& flags) {
  const std::string dir = flags.Get("model", ""), art = flags.Get("artifact", ""),
                    calib_path = flags.Get("calib", ""), eval_path = flags.Get("eval", "");
  auto seqs = flags.GetInt("calib-seqs", 16), seq_len = flags.GetInt("seq-len", 512),
       eval_tokens = flags.GetInt("eval-tokens", 8192), epochs = flags.GetInt("epochs", 5),
       batch = flags.GetInt("batch", 2), holdout = flags.GetInt("holdout", 2),
       patience = flags.GetInt("patience", 1), block = flags.GetInt("block", 1),
       e2e = flags.GetInt("e2e", 0), e2e_epochs = flags.GetInt("e2e-epochs", 3),
       e2e_head = flags.GetInt("e2e-head", 0);
  auto lr = flags.GetDouble("lr", 1e-3), e2e_lr = flags.GetDouble("e2e-lr", 1e-3);
  if (dir.empty() || art.empty() || calib_path.empty() || eval_path.empty() || !seqs.ok() ||
      !seq_len.ok() || !eval_tokens.ok() || !epochs.ok() || !batch.ok() || !holdout.ok() ||
      !patience.ok() || !lr.ok() || *seqs < 1 || !block.ok() || !e2e.ok() || !e2e_epochs.ok() ||
      !e2e_head.ok() || !e2e_lr.ok() || (*block == 0 && *e2e == 0)) {
    std::fprintf(stderr,
                 "usage: quantd-bench finetune --model FP_DIR --artifact ART_DIR --calib TOKENS|TXT "
                 "--eval TOKENS|TXT [--calib-seqs 16] [--seq-len 512] [--eval-tokens 8192] "
                 "[--epochs 5] [--lr 1e-3] [--batch 2] [--holdout 2] [--patience 1] [--save DIR] "
                 "[--block 1] [--e2e 0|1 [--e2e-epochs 3] [--e2e-lr 1e-3] [--e2e-head 0|1]] "
                 "[--device cpu|cuda:N]\n");
    return 2;
  }
  std::unique_ptr<quant::Device> dev = DeviceFromFlags(flags);
  if (dev == nullptr) return 1;
  model::FinetuneOptions opts;
  opts.seq_len = static_cast<int>(*seq_len);
  opts.epochs = static_cast<int>(*epochs);
  opts.learning_rate = *lr;
  opts.batch_sequences = static_cast<int>(*batch);
  opts.holdout_sequences = static_cast<int>(*holdout);
  opts.patience = static_cast<int>(*patience);
  model::E2eOptions eopts;
  eopts.seq_len = opts.seq_len;
  eopts.epochs = static_cast<int>(*e2e_epochs);
  eopts.learning_rate = *e2e_lr;
  eopts.batch_sequences = opts.batch_sequences;
  eopts.holdout_sequences = opts.holdout_sequences;
  eopts.patience = opts.patience;
  eopts.tune_head = *e2e_head != 0;
  for (const absl::Status& st :
       {model::ValidateFinetuneOptions(opts), model::ValidateE2eOptions(eopts)}) {
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", st.ToString().c_str());
      return 2;
    }
  }
  model::LlamaConfig cfg, qcfg;
  auto fp = artifact::LoadArtifactWeights(dir, &cfg);
  auto q = artifact::LoadArtifactWeights(art, &qcfg);
  auto calib = LoadBenchTokens(calib_path, dir), eval = LoadBenchTokens(eval_path, dir);
  for (const absl::Status& s : {fp.status(), q.status(), calib.status(), eval.status()}) {
    if (!s.ok()) return Fail(s);
  }
  if (*e2e != 0 && eopts.tune_head && qcfg.tie_word_embeddings) {
    std::fprintf(stderr, "--e2e-head 1: %s ties its head to the embedding; only untied heads are "
                         "tuned\n", art.c_str());
    return 2;
  }
  const size_t want = static_cast<size_t>(*seqs) * static_cast<size_t>(opts.seq_len);
  if (calib->size() > want) calib->resize(want);
  model::PerplexityOptions popts;
  popts.context = std::min(512, cfg.max_position_embeddings);
  popts.max_tokens = *eval_tokens;
  auto t0 = std::chrono::steady_clock::now();
  auto before = model::Perplexity(qcfg, *q, *eval, popts);
  if (!before.ok()) return Fail(before.status());
  PrintLine({{"artifact", art},
             {"device", dev->name()},
             {"ppl_before", before->ppl},
             {"eval_targets", before->targets},
             {"eval_seconds", Seconds(t0)},
             {"calib_tokens", calib->size()},
             {"epochs", opts.epochs},
             {"lr", opts.learning_rate},
             {"batch", opts.batch_sequences},
             {"holdout", opts.holdout_sequences}});
  t0 = std::chrono::steady_clock::now();
  std::vector<model::LayerScales> scales;
  absl::StatusOr<std::vector<model::BlockTuneReport>> reports;
  if (*block != 0) {
    reports = model::FinetuneBlocks(
      qcfg, *fp, &*q, *calib, opts, &scales, [](const model::BlockTuneReport& r) {
        PrintLine({{"layer", r.layer},
                   {"heldout_before", r.heldout_before},
                   {"heldout_curve", r.heldout_curve},
                   {"heldout_best", r.heldout_best},
                   {"epochs_run", r.epochs_run},
                   {"seconds", r.seconds}});
      }, dev.get());
    if (!reports.ok()) return Fail(reports.status());
  }
  const double block_secs = Seconds(t0);
  nlohmann::json e2e_out;
  if (*e2e != 0) {
    if (*block != 0) {
      const auto t1 = std::chrono::steady_clock::now();
      auto mid = model::Perplexity(qcfg, *q, *eval, popts);
      if (!mid.ok()) return Fail(mid.status());
      e2e_out["ppl_after_block"] = mid->ppl;
      PrintLine({{"ppl_after_block", mid->ppl},
                 {"block_seconds", block_secs},
                 {"eval_seconds", Seconds(t1)}});
    }
    auto rep = model::FinetuneEndToEnd(
        qcfg, *fp, &*q, *calib, eopts, &scales, [](const model::E2eReport& r) {
          PrintLine({{"e2e_epoch", r.epochs_run},
                     {"heldout_kl_before", r.heldout_before},
                     {"heldout_kl_curve", r.heldout_curve},
                     {"train_kl_last", r.train_last},
                     {"seconds", r.seconds}});
        }, dev.get());
    if (!rep.ok()) return Fail(rep.status());
    e2e_out["heldout_kl_before"] = rep->heldout_before;
    e2e_out["heldout_kl_best"] = rep->heldout_best;
    e2e_out["epochs_run"] = rep->epochs_run;
    e2e_out["seconds"] = rep->seconds;
    e2e_out["lr"] = eopts.learning_rate;
    e2e_out["head"] = eopts.tune_head;
  }
  const double ft_secs = Seconds(t0);
  t0 = std::chrono::steady_clock::now();
  auto after = model::Perplexity(qcfg, *q, *eval, popts);
  if (!after.ok()) return Fail(after.status());
  nlohmann::json out = {{"ppl_before", before->ppl},
                        {"ppl_after", after->ppl},
                        {"finetune_seconds", ft_secs},
                        {"block_seconds", block_secs},
                        {"eval_seconds", Seconds(t0)},
                        {"peak_rss_mib", PeakRssMiB()}};
  if (!e2e_out.is_null()) out["e2e"] = e2e_out;
  const std::string save = flags.Get("save", "");
  if (!save.empty()) {
    absl::Status st = SaveTuned(qcfg, *q, scales, art, save);
    if (st.ok()) {
      model::LlamaConfig rcfg;
      auto reloaded = artifact::LoadArtifactWeights(save, &rcfg);
      st = reloaded.status();
      if (st.ok()) {
        auto p = model::Perplexity(rcfg, *reloaded, *eval, popts);
        st = p.status();
        if (p.ok()) out["saved"] = {{"path", save}, {"ppl_reloaded", p->ppl}};
      }
    }
    if (!st.ok()) {
      std::fprintf(stderr, "--save %s: %s\n", save.c_str(), st.ToString().c_str());
      return 1;
    }
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace quantd::bench

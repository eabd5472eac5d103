#include "client/command_line.h"

#include <filesystem>

#include "gtest/gtest.h"

namespace quantd::client {
namespace {

std::vector<std::string> SubmitArgs() {
  return {"submit", "rel/model", "--calib", "c.u16", "--method", "quip-sharp", "--bits", "2",
          "--name", "m"};
}

TEST(CommandLine, SubmitMakesPathsAbsoluteAndFillsTheRequest) {
  auto args = SubmitArgs();
  args.insert(args.end(), {"--eval", "/abs/e.u16", "--seed", "7", "--group-size", "64",
                           "--greedy-passes", "2", "--calib-seq-len", "256", "--max-calib-seqs",
                           "4", "--request-id", "rid", "--json"});
  auto inv = ParseCommandLine(args, nullptr);
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->command, Command::kSubmit);
  EXPECT_EQ(inv->addr, kDefaultAddr);
  const auto& r = inv->submit;
  const std::string cwd = std::filesystem::current_path().string();
  EXPECT_EQ(r.model_dir(), cwd + "/rel/model");
  EXPECT_EQ(r.calib_path(), cwd + "/c.u16");
  EXPECT_EQ(r.eval_path(), "/abs/e.u16");
  EXPECT_EQ(r.name(), "m");
  EXPECT_EQ(r.request_id(), "rid");
  EXPECT_EQ(r.spec().method(), "quip-sharp");
  EXPECT_EQ(r.spec().bits(), 2);
  EXPECT_EQ(r.spec().seed(), 7u);
  EXPECT_EQ(r.spec().group_size(), 64);
  EXPECT_EQ(r.spec().greedy_passes(), 2);
  EXPECT_EQ(r.calib_seq_len(), 256);
  EXPECT_EQ(r.max_calib_seqs(), 4);
  EXPECT_TRUE(inv->json);
  EXPECT_FALSE(inv->wait);
}

// Issue 27: --finetune and its options; an option without --finetune or out of range is a
// usage error naming it.
TEST(CommandLine, SubmitFinetuneFlags) {
  auto plain = ParseCommandLine(SubmitArgs(), nullptr);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->submit.spec().has_finetune());
  auto args = SubmitArgs();
  args.insert(args.end(), {"--finetune", "--ft-epochs", "6", "--ft-lr", "0.002", "--ft-batch", "4",
                           "--ft-holdout", "3", "--ft-patience", "2"});
  auto inv = ParseCommandLine(args, nullptr);
  ASSERT_TRUE(inv.ok()) << inv.status();
  const auto& ft = inv->submit.spec().finetune();
  EXPECT_TRUE(ft.enabled());
  EXPECT_EQ(ft.epochs(), 6);
  EXPECT_DOUBLE_EQ(ft.learning_rate(), 0.002);
  EXPECT_EQ(ft.batch_sequences(), 4);
  EXPECT_EQ(ft.holdout_sequences(), 3);
  EXPECT_EQ(ft.patience(), 2);
  auto defaults = SubmitArgs();
  defaults.push_back("--finetune");
  auto d = ParseCommandLine(defaults, nullptr);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->submit.spec().finetune().enabled());
  EXPECT_EQ(d->submit.spec().finetune().epochs(), 0);  // the server fills its default
  EXPECT_EQ(d->submit.spec().finetune().e2e(), "");     // on, filled in by the server
  // The KL stage's options.
  auto e2e = SubmitArgs();
  e2e.insert(e2e.end(), {"--finetune", "--ft-e2e", "on", "--ft-e2e-epochs", "5", "--ft-e2e-lr",
                         "0.0005", "--ft-e2e-head"});
  auto e = ParseCommandLine(e2e, nullptr);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->submit.spec().finetune().e2e(), "on");
  EXPECT_EQ(e->submit.spec().finetune().e2e_epochs(), 5);
  EXPECT_DOUBLE_EQ(e->submit.spec().finetune().e2e_learning_rate(), 0.0005);
  EXPECT_TRUE(e->submit.spec().finetune().e2e_head());
  auto off = SubmitArgs();
  off.insert(off.end(), {"--finetune", "--ft-e2e", "off"});
  auto o = ParseCommandLine(off, nullptr);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->submit.spec().finetune().e2e(), "off");
  for (std::vector<std::string> extra :
       {std::vector<std::string>{"--ft-epochs", "3"},
        std::vector<std::string>{"--ft-e2e", "off"},
        std::vector<std::string>{"--finetune", "--ft-e2e", "maybe"},
        std::vector<std::string>{"--finetune", "--ft-e2e-epochs", "0"},
        std::vector<std::string>{"--finetune", "--ft-e2e-lr", "2"},
        std::vector<std::string>{"--finetune", "--ft-e2e", "off", "--ft-e2e-epochs", "3"},
        std::vector<std::string>{"--finetune", "--ft-lr", "1.5"},
        std::vector<std::string>{"--finetune", "--ft-epochs", "0"},
        std::vector<std::string>{"--finetune", "--ft-holdout", "x"}}) {
    auto a = SubmitArgs();
    a.insert(a.end(), extra.begin(), extra.end());
    auto bad = ParseCommandLine(a, nullptr);
    ASSERT_FALSE(bad.ok()) << extra[extra.size() - 2];
    EXPECT_NE(bad.status().message().find(extra[extra.size() - 2]), std::string::npos)
        << bad.status();
  }
}

// Issue 24: the short calibration flags, the sampling and start token, the token weighting.
TEST(CommandLine, SubmitCalibrationAndWeightingFlags) {
  auto args = SubmitArgs();
  args.insert(args.end(), {"--seq-len", "128", "--calib-seqs", "16", "--calib-sampling", "random",
                           "--calib-seed", "9", "--start-token", "none", "--token-weighting",
                           "sink", "--sink-weight", "32"});
  auto inv = ParseCommandLine(args, nullptr);
  ASSERT_TRUE(inv.ok()) << inv.status();
  const auto& r = inv->submit;
  EXPECT_EQ(r.calib_seq_len(), 128);
  EXPECT_EQ(r.max_calib_seqs(), 16);
  EXPECT_EQ(r.calib_sampling(), "random");
  EXPECT_EQ(r.calib_seed(), 9u);
  EXPECT_EQ(r.start_token(), "none");
  EXPECT_EQ(r.spec().token_weighting(), "sink");
  EXPECT_EQ(r.spec().sink_weight(), 32);
  EXPECT_FALSE(r.spec().hessian_scale());
  auto mr = SubmitArgs();
  mr.insert(mr.end(), {"--token-weighting", "sink+massive", "--massive-ratio", "250"});
  auto with_mr = ParseCommandLine(mr, nullptr);
  ASSERT_TRUE(with_mr.ok()) << with_mr.status();
  EXPECT_EQ(with_mr->submit.spec().token_weighting(), "sink+massive");
  EXPECT_EQ(with_mr->submit.spec().massive_ratio(), 250);
  auto bad_mr = SubmitArgs();
  bad_mr.insert(bad_mr.end(), {"--massive-ratio", "lots"});
  auto bad_ratio = ParseCommandLine(bad_mr, nullptr);
  EXPECT_EQ(bad_ratio.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_ratio.status().message().find("--massive-ratio"), std::string::npos)
      << bad_ratio.status();
  auto hs = SubmitArgs();
  hs.push_back("--hessian-scale");
  auto with_hs = ParseCommandLine(hs, nullptr);
  ASSERT_TRUE(with_hs.ok()) << with_hs.status();
  EXPECT_TRUE(with_hs->submit.spec().hessian_scale());
  // An alias and its long name with different values is a usage error naming both.
  auto clash = SubmitArgs();
  clash.insert(clash.end(), {"--seq-len", "128", "--calib-seq-len", "256"});
  auto bad = ParseCommandLine(clash, nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--seq-len"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("--calib-seq-len"), std::string::npos) << bad.status();
  auto same = SubmitArgs();
  same.insert(same.end(), {"--calib-seqs", "8", "--max-calib-seqs", "8"});
  ASSERT_TRUE(ParseCommandLine(same, nullptr).ok());
}

TEST(CommandLine, SubmitRequiredFlagsAndForms) {
  for (const char* drop : {"--calib", "--method", "--bits", "--name"}) {
    auto args = SubmitArgs();
    for (size_t i = 0; i < args.size(); ++i) {
      if (args[i] == drop) {
        args.erase(args.begin() + i, args.begin() + i + 2);
        break;
      }
    }
    auto inv = ParseCommandLine(args, nullptr);
    ASSERT_FALSE(inv.ok()) << drop;
    EXPECT_NE(inv.status().message().find(drop), std::string::npos) << inv.status();
  }
  // rtn alone may go without calibration data (no Hessian capture).
  auto rtn_no_calib = ParseCommandLine({"submit", "dir", "--method", "rtn", "--bits", "4", "--name", "m"},
                                       nullptr);
  ASSERT_TRUE(rtn_no_calib.ok()) << rtn_no_calib.status();
  EXPECT_TRUE(rtn_no_calib->submit.calib_path().empty());
  auto no_dir = ParseCommandLine({"submit", "--calib", "c", "--method", "rtn", "--bits", "4",
                                  "--name", "m"},
                                 nullptr);
  EXPECT_FALSE(no_dir.ok());
  auto bad_bits = SubmitArgs();
  bad_bits[7] = "two";
  EXPECT_FALSE(ParseCommandLine(bad_bits, nullptr).ok());
  // Values the server must judge (method, bits) pass through, so its INVALID_ARGUMENT is what
  // the user sees (exit 1), and there is one list of valid methods.
  auto magic = SubmitArgs();
  magic[5] = "magic";
  magic[7] = "7";
  auto inv = ParseCommandLine(magic, nullptr);
  ASSERT_TRUE(inv.ok()) << inv.status();
  EXPECT_EQ(inv->submit.spec().method(), "magic");
  EXPECT_EQ(inv->submit.spec().bits(), 7);
  // --grid makes --bits optional: the server takes the grid's own bits (0 on the wire).
  auto grid = ParseCommandLine({"submit", "m", "--calib", "c", "--method", "gptq", "--grid",
                                "q4_0", "--name", "n"},
                               nullptr);
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->submit.spec().grid(), "q4_0");
  EXPECT_EQ(grid->submit.spec().bits(), 0);
  // --avg-bits makes --bits optional too (a bit budget picks each matrix's bits); its range and
  // --budget-weight are the server's to judge.
  auto budget = ParseCommandLine({"submit", "m", "--calib", "c", "--method", "quip-sharp",
                                  "--avg-bits", "2.5", "--budget-weight", "rel", "--name", "n"},
                                 nullptr);
  ASSERT_TRUE(budget.ok()) << budget.status();
  EXPECT_EQ(budget->submit.spec().avg_bits(), 2.5);
  EXPECT_EQ(budget->submit.spec().budget_weight(), "rel");
  EXPECT_EQ(budget->submit.spec().bits(), 0);
  EXPECT_FALSE(ParseCommandLine({"submit", "m", "--calib", "c", "--method", "quip-sharp",
                                 "--avg-bits", "two", "--name", "n"},
                                nullptr)
                   .ok());
}

TEST(CommandLine, QualityGateNeedsWaitAndEval) {
  auto args = SubmitArgs();
  args.insert(args.end(), {"--max-ppl-ratio", "1.2"});
  EXPECT_FALSE(ParseCommandLine(args, nullptr).ok());
  args.push_back("--wait");
  EXPECT_FALSE(ParseCommandLine(args, nullptr).ok());  // no --eval
  args.insert(args.end(), {"--eval", "e.u16"});
  auto inv = ParseCommandLine(args, nullptr);
  ASSERT_TRUE(inv.ok()) << inv.status();
  ASSERT_TRUE(inv->max_ppl_ratio.has_value());
  EXPECT_DOUBLE_EQ(*inv->max_ppl_ratio, 1.2);
  EXPECT_TRUE(inv->wait);
  args.back() = "e.u16";
  auto zero = args;
  zero[zero.size() - 4] = "0";
  EXPECT_FALSE(ParseCommandLine(zero, nullptr).ok());
}

TEST(CommandLine, AddressPrecedence) {
  EXPECT_EQ(ParseCommandLine({"jobs"}, nullptr)->addr, "127.0.0.1:7070");
  EXPECT_EQ(ParseCommandLine({"jobs"}, "")->addr, "127.0.0.1:7070");
  EXPECT_EQ(ParseCommandLine({"jobs"}, "h:1")->addr, "h:1");
  EXPECT_EQ(ParseCommandLine({"--addr", "h:2", "jobs"}, "h:1")->addr, "h:2");
  EXPECT_EQ(ParseCommandLine({"jobs", "--addr=h:3"}, "h:1")->addr, "h:3");
  EXPECT_FALSE(ParseCommandLine({"--addr", "a:1", "jobs", "--addr", "b:2"}, nullptr).ok());
  EXPECT_FALSE(ParseCommandLine({"--addr"}, nullptr).ok());
  EXPECT_FALSE(ParseCommandLine({"jobs", "--addr="}, nullptr).ok());
}

TEST(CommandLine, JobCommands) {
  for (auto [name, cmd] : std::vector<std::pair<std::string, Command>>{
           {"watch", Command::kWatch}, {"status", Command::kStatus}, {"cancel", Command::kCancel}}) {
    auto inv = ParseCommandLine({name, "job-1", "--json"}, nullptr);
    ASSERT_TRUE(inv.ok()) << name << inv.status();
    EXPECT_EQ(inv->command, cmd);
    EXPECT_EQ(inv->job_id, "job-1");
    EXPECT_TRUE(inv->json);
    EXPECT_FALSE(ParseCommandLine({name}, nullptr).ok()) << name;
    EXPECT_FALSE(ParseCommandLine({name, "a", "b"}, nullptr).ok()) << name;
  }
  EXPECT_EQ(ParseCommandLine({"jobs", "--json"}, nullptr)->command, Command::kJobs);
  EXPECT_FALSE(ParseCommandLine({"jobs", "x"}, nullptr).ok());
  EXPECT_FALSE(ParseCommandLine({"jobs", "--wait"}, nullptr).ok());
}

TEST(CommandLine, ModelsAndFetch) {
  auto all = ParseCommandLine({"models"}, nullptr);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->model_name, "");
  EXPECT_EQ(ParseCommandLine({"models", "m", "--json"}, nullptr)->model_name, "m");

  auto f = ParseCommandLine({"fetch", "m@2", "-o", "/tmp/out"}, nullptr);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->command, Command::kFetch);
  EXPECT_EQ(f->model_name, "m");
  EXPECT_EQ(f->model_version, 2);
  EXPECT_EQ(f->out_dir, "/tmp/out");
  EXPECT_TRUE(ParseCommandLine({"fetch", "m", "-o", "d", "--format", "native"}, nullptr).ok());
  EXPECT_FALSE(ParseCommandLine({"fetch", "m"}, nullptr).ok());  // no -o
  EXPECT_FALSE(f->hf_format);
  auto hf = ParseCommandLine({"fetch", "m", "-o", "d", "--format", "hf"}, nullptr);
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_TRUE(hf->hf_format);
  EXPECT_EQ(hf->hf_dtype, "f16");
  auto bf = ParseCommandLine({"fetch", "m", "-o", "d", "--format", "hf", "--dtype", "bf16"}, nullptr);
  ASSERT_TRUE(bf.ok()) << bf.status();
  EXPECT_EQ(bf->hf_dtype, "bf16");
  EXPECT_FALSE(
      ParseCommandLine({"fetch", "m", "-o", "d", "--format", "hf", "--dtype", "f8"}, nullptr).ok());
  // --dtype only means something for the HF export.
  EXPECT_FALSE(ParseCommandLine({"fetch", "m", "-o", "d", "--dtype", "f32"}, nullptr).ok());
  auto gguf = ParseCommandLine({"fetch", "m", "-o", "d", "--format", "gguf"}, nullptr);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  EXPECT_EQ(gguf->export_format, "gguf");
  EXPECT_FALSE(gguf->hf_format);
  EXPECT_FALSE(ParseCommandLine({"fetch", "m", "-o", "d", "--format", "gguf", "--dtype", "f32"},
                                nullptr).ok());  // --dtype is for hf only
  EXPECT_FALSE(ParseCommandLine({"fetch", "m", "-o", "d", "--format", "onnx"}, nullptr).ok());
  EXPECT_FALSE(ParseCommandLine({"fetch", "m@0", "-o", "d"}, nullptr).ok());
}

TEST(CommandLine, HelpAndUnknown) {
  EXPECT_EQ(ParseCommandLine({"--help"}, nullptr)->command, Command::kHelp);
  EXPECT_EQ(ParseCommandLine({"-h"}, nullptr)->command, Command::kHelp);
  EXPECT_EQ(ParseCommandLine({"help"}, nullptr)->command, Command::kHelp);
  EXPECT_EQ(ParseCommandLine({"fetch", "--help"}, nullptr)->command, Command::kHelp);
  EXPECT_FALSE(ParseCommandLine({}, nullptr).ok());
  EXPECT_FALSE(ParseCommandLine({"frobnicate"}, nullptr).ok());
  EXPECT_FALSE(ParseCommandLine({"--json", "jobs"}, nullptr).ok());
  const std::string usage = UsageText();
  for (const char* s : {"submit", "watch", "jobs", "status", "cancel", "models", "fetch",
                        "exit codes", "QUANTD_ADDR"}) {
    EXPECT_NE(usage.find(s), std::string::npos) << s;
  }
}

}  // namespace
}  // namespace quantd::client

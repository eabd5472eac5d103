// End-to-end: real quantd + 2 real worker processes + quantctl, on the bundled real model.
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "common/file_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e_util.h"
#include "tests/process_util.h"
#include "engine/artifact/artifact.h"
#include "engine/format/checkpoint.h"
#include "engine/model/perplexity.h"
#include "engine/quant/packed_matrix.h"
#include "engine/tokenizer/tokens.h"

namespace quantd::testing {
namespace {

using json = nlohmann::json;


json Submit(const Daemon& d, std::vector<std::string> args) { return SubmitJson(d, args); }

json Status(const Daemon& d, const std::string& id) {
  json j = StatusJson(d, id);
  EXPECT_TRUE(j.is_object()) << "quantctl status " << id << " failed";
  return j;
}

class ServiceE2E : public SharedDaemonSuite {};

TEST_F(ServiceE2E, QuipSharp2BitEndToEnd) {
  const Daemon& d = *daemon_;
  ASSERT_TRUE(d.ok()) << d.Log();
  json job = Submit(d, {ExampleModel(), "--calib", ExampleCalib(), "--eval", ExampleEval(), "--method", "quip-sharp",
                        "--bits", "2", "--name", "e2e-qs2"});
  const std::string id = job["id"];
  CommandResult w = d.Quantctl({"watch", id});
  ASSERT_EQ(w.exit_code, 0) << w.out << w.err << d.Log();
  json st = Status(d, id);
  EXPECT_EQ(st["state"], "JOB_STATE_SUCCEEDED");
  EXPECT_EQ(st["version"], 1);

  // The registry directory holds the version with a manifest whose checksums match the files.
  const std::string vdir = d.data_dir() + "/registry/e2e-qs2/1";
  auto manifest_text = ReadFile(vdir + "/manifest.json");
  ASSERT_TRUE(manifest_text.ok());
  json m = ParseJson(*manifest_text);
  ASSERT_TRUE(m["files"].is_array());
  ASSERT_GE(m["files"].size(), 2u);
  for (const auto& f : m["files"]) {
    auto digest = Sha256File(vdir + "/" + f["path"].get<std::string>());
    ASSERT_TRUE(digest.ok());
    EXPECT_EQ(*digest, f["sha256"].get<std::string>()) << f["path"];
  }
  ASSERT_EQ(m["tensors"].size(), 35u);
  for (const auto& t : m["tensors"]) {
    EXPECT_GT(t["proxy_loss"].get<double>(), 0.0);
    EXPECT_LT(t["proxy_loss"].get<double>(), 0.5) << t["name"];
  }
  // Issue 24: the Hessian token weighting and the calibration windows, defaults filled in.
  EXPECT_EQ(m["spec"]["token_weighting"], "sink");
  EXPECT_EQ(m["spec"]["sink_weight"], 16.0);
  EXPECT_EQ(m["calibration"]["sampling"], "first");  // no --calib-seqs: every window
  EXPECT_TRUE(m["calibration"]["start_token"].is_null());  // llama2.c model: no tokenizer.json
  EXPECT_TRUE(m["perplexity"]["start_token"].is_null());
  const double fp = m["perplexity"]["fp"], q = m["perplexity"]["quantized"];
  EXPECT_NEAR(fp, 5.4540, 5e-3);
  EXPECT_GT(q, fp);
  EXPECT_TRUE(std::isfinite(q));

  // quantctl fetch verifies checksums; a fresh evaluation of the fetched model equals the
  // perplexity in the manifest.
  model::LlamaConfig cfg;
  EXPECT_NEAR(FetchedPpl(d, "e2e-qs2", &cfg), q, 1e-6 * q);

  // --format hf: a plain Hugging Face checkpoint (fp16, dequantized) whose perplexity follows
  // the native model's within fp16 rounding, with the tokenizer beside it.
  const std::string hf = MakeTempDir("fetch-hf") + "/model";
  CommandResult fh = d.Quantctl({"fetch", "e2e-qs2", "-o", hf, "--format", "hf"});
  ASSERT_EQ(fh.exit_code, 0) << fh.out << fh.err;
  EXPECT_TRUE(std::filesystem::exists(hf + "/tok512.bin"));
  EXPECT_TRUE(std::filesystem::exists(hf + "/quantd_manifest.json"));
  EXPECT_FALSE(std::filesystem::exists(hf + "/.quantd-native"));
  auto hf_weights = artifact::LoadArtifactWeights(hf, nullptr);
  ASSERT_TRUE(hf_weights.ok()) << hf_weights.status();
  auto tokens = model::LoadTokenFile(ExampleEval());
  ASSERT_TRUE(tokens.ok());
  auto hf_ppl = model::Perplexity(cfg, *hf_weights, *tokens, {});
  ASSERT_TRUE(hf_ppl.ok());
  EXPECT_NEAR(hf_ppl->ppl, q, 2e-3 * q);

  // Both workers completed tasks.
  std::string metrics = HttpGet(d.metrics_port(), "/metrics");
  for (const char* w : {"local-0", "local-1"}) {
    std::regex re(std::string("quantd_worker_tasks_completed_total\\{worker=\"") + w +
                  "\"\\} ([0-9.e+]+)");
    std::smatch mm;
    ASSERT_TRUE(std::regex_search(metrics, mm, re)) << w << "\n" << metrics;
    EXPECT_GT(std::stod(mm[1]), 0) << w;
  }
  EXPECT_NE(metrics.find("quantd_tasks_total{kind=\"quantize\",outcome=\"ok\"} 35"),
            std::string::npos)
      << metrics;

  // The workers' caches held the job's blobs (model snapshot, tokens, Hessians); once the job
  // ended, the next heartbeats (every 2 s) remove them: a long-running worker's disk does not
  // fill up with finished jobs.
  auto cached = [&] {
    int n = 0;
    for (const char* w : {"local-0", "local-1"}) {
      n += std::filesystem::exists(d.data_dir() + "/worker-cache/" + w + "/jobs/" + id);
    }
    return n;
  };
  for (int i = 0; i < 100 && cached() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(cached(), 0) << d.Log();
  EXPECT_NE(d.Log().find("job " + id + " ended: removed its cached blobs"), std::string::npos)
      << d.Log();
  EXPECT_TRUE(std::filesystem::exists(d.data_dir() + "/worker-cache/local-0/jobs"));
}

// The model families beyond Llama (issue 23): a gptq 4-bit job on the transformers-made Qwen2
// fixture (q/k/v biases, a sliding layer) and Gemma 2 fixture ((1+w) norms, pre/post norms,
// soft-caps) succeeds; the artifact keeps the biases and norms bit-exact and the HF export's
// config names the same class; QuaRot on Gemma 2 is refused at submit with the reason.
TEST_F(ServiceE2E, FamiliesGptq4Bit) {
  const Daemon& d = *daemon_;
  ASSERT_TRUE(d.ok()) << d.Log();
  const std::string tmp = MakeTempDir("families");
  const std::string calib = tmp + "/calib.u16";
  {
    std::ofstream f(calib, std::ios::binary);  // 8 sequences of 64 ids < vocab 96
    for (int i = 0; i < 512; ++i) {
      const uint16_t t = static_cast<uint16_t>((i * 37 + i / 7) % 96);
      f.write(reinterpret_cast<const char*>(&t), 2);
    }
  }
  for (const char* fam : {"qwen2", "gemma2", "phi3"}) {
    const bool phi3 = std::string(fam) == "phi3";
    const std::string model = SourceDir() + "/engine/model/testdata/families/" + fam;
    const std::string name = std::string("fam-") + fam;
    json job = Submit(d, {model, "--calib", calib, "--method", "gptq", "--bits", "4", "--name",
                          name, "--calib-seq-len", "64", "--eval-context", "64"});
    ASSERT_TRUE(job.contains("id")) << job.dump();
    CommandResult w = d.Quantctl({"watch", job["id"]});
    ASSERT_EQ(w.exit_code, 0) << fam << w.out << w.err << d.Log();
    EXPECT_EQ(Status(d, job["id"])["state"], "JOB_STATE_SUCCEEDED") << fam;

    const std::string out = MakeTempDir(name) + "/model";
    CommandResult f = d.Quantctl({"fetch", name, "-o", out});
    ASSERT_EQ(f.exit_code, 0) << f.out << f.err;
    auto src = model::Checkpoint::Open(model);
    auto art = model::Checkpoint::Open(out);
    ASSERT_TRUE(src.ok() && art.ok());
    int vectors = 0, quantized = 0;
    for (const std::string& n : (*src)->Names()) {
      auto a = (*src)->Get(n);
      ASSERT_TRUE(a.ok());
      if (a->shape.size() == 1) {  // norms, biases: copied as they are
        auto b = (*art)->Get(n);
        ASSERT_TRUE(b.ok()) << n;
        EXPECT_EQ(a->data, b->data) << n;
        ++vectors;
      } else if ((*art)->Get(n.substr(0, n.size() - 6) + "qweight").ok()) {
        ++quantized;
      }
    }
    // 2 layers x 7 linears; Phi-3: 2 x (qkv_proj, o_proj, gate_up_proj, down_proj), each
    // quantized as the one fused matrix it is.
    EXPECT_EQ(quantized, phi3 ? 8 : 14) << fam;
    if (phi3) {
      auto qkv = (*art)->Get("model.layers.1.self_attn.qkv_proj.qweight");
      ASSERT_TRUE(qkv.ok()) << qkv.status();
      auto packed = quant::DecodePacked(qkv->data);
      ASSERT_TRUE(packed.ok()) << packed.status();
      EXPECT_EQ(packed->m, 64);  // q 32 + k 16 + v 16 rows
      EXPECT_EQ(packed->n, 32);
    }
    EXPECT_EQ(vectors, std::string(fam) == "qwen2" ? 2 * 5 + 1 : phi3 ? 2 * 2 + 1 : 2 * 4 + 1)
        << fam;
    model::LlamaConfig cfg;
    auto weights = artifact::LoadArtifactWeights(out, &cfg);
    ASSERT_TRUE(weights.ok()) << weights.status();
    auto tokens = model::LoadTokenFile(model + "/tokens.u16");
    ASSERT_TRUE(tokens.ok());
    model::PerplexityOptions po;
    po.context = static_cast<int>(tokens->size());
    auto ppl = model::Perplexity(cfg, *weights, *tokens, po);
    ASSERT_TRUE(ppl.ok()) << ppl.status();
    EXPECT_TRUE(std::isfinite(ppl->ppl)) << fam;

    const std::string hf = MakeTempDir(name + "-hf") + "/model";
    CommandResult fh = d.Quantctl({"fetch", name, "-o", hf, "--format", "hf"});
    ASSERT_EQ(fh.exit_code, 0) << fh.out << fh.err;
    json src_cfg = json::parse(*ReadFile(model + "/config.json"));
    json hf_cfg = json::parse(*ReadFile(hf + "/config.json"));
    EXPECT_EQ(hf_cfg["architectures"], src_cfg["architectures"]) << fam;
    EXPECT_EQ(hf_cfg["model_type"], src_cfg["model_type"]) << fam;
  }
  CommandResult q = d.Quantctl({"submit", SourceDir() + "/engine/model/testdata/families/gemma2",
                                "--calib", calib, "--method", "quarot", "--bits", "4", "--name",
                                "fam-gemma2-quarot", "--calib-seq-len", "64", "--eval-context", "64"});
  EXPECT_EQ(q.exit_code, 1) << q.out << q.err;
  EXPECT_NE(q.err.find("INVALID_ARGUMENT"), std::string::npos) << q.err;
  EXPECT_NE(q.err.find("quarot does not support Gemma2ForCausalLM"), std::string::npos) << q.err;
  // QuaRot on Phi-3: each fused matrix is rotated part by part, as the in-memory transform does.
  json pq = Submit(d, {SourceDir() + "/engine/model/testdata/families/phi3", "--calib", calib,
                       "--method", "quarot", "--bits", "4", "--name", "fam-phi3-quarot",
                       "--calib-seq-len", "64", "--eval-context", "64"});
  ASSERT_TRUE(pq.contains("id")) << pq.dump();
  CommandResult pw = d.Quantctl({"watch", pq["id"]});
  ASSERT_EQ(pw.exit_code, 0) << pw.out << pw.err << d.Log();
  EXPECT_EQ(Status(d, pq["id"])["state"], "JOB_STATE_SUCCEEDED");
}

TEST_F(ServiceE2E, IdempotentSubmitAndVersions) {
  const Daemon& d = *daemon_;
  ASSERT_TRUE(d.ok());
  std::vector<std::string> args = {ExampleModel(), "--calib", ExampleCalib(), "--method", "rtn", "--bits", "4",
                                   "--name", "e2e-versions", "--max-calib-seqs", "4"};
  auto with_id = args;
  with_id.insert(with_id.end(), {"--request-id", "same-id-1"});
  json a = Submit(d, with_id);
  json b = Submit(d, with_id);
  EXPECT_EQ(a["id"], b["id"]);
  ASSERT_EQ(d.Quantctl({"watch", a["id"]}).exit_code, 0);
  json c = Submit(d, args);
  EXPECT_NE(c["id"], a["id"]);
  ASSERT_EQ(d.Quantctl({"watch", c["id"]}).exit_code, 0);
  EXPECT_EQ(Status(d, a["id"])["version"], 1);
  EXPECT_EQ(Status(d, c["id"])["version"], 2);

  // Deleting the latest version: fetches of it are NOT_FOUND, "latest" is 1 again, and the next
  // publication is 3, so e2e-versions@2 never names another model.
  CommandResult latest = d.Quantctl({"delete", "e2e-versions"});
  EXPECT_EQ(latest.exit_code, 2) << latest.err;  // the version must be named
  CommandResult del = d.Quantctl({"delete", "e2e-versions@2"});
  ASSERT_EQ(del.exit_code, 0) << del.out << del.err;
  EXPECT_EQ(del.out, "deleted e2e-versions@2\n");
  CommandResult again = d.Quantctl({"delete", "e2e-versions@2"});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("NOT_FOUND"), std::string::npos) << again.err;
  CommandResult f = d.Quantctl({"fetch", "e2e-versions@2", "-o", MakeTempDir("deleted")});
  EXPECT_EQ(f.exit_code, 1);
  EXPECT_NE(f.err.find("NOT_FOUND"), std::string::npos) << f.err;
  CommandResult models = d.Quantctl({"models", "e2e-versions", "--json"});
  ASSERT_EQ(models.exit_code, 0);
  json list = ParseJson(models.out);
  ASSERT_TRUE(list.is_array()) << models.out;
  ASSERT_EQ(list.size(), 1u) << models.out;
  EXPECT_EQ(list[0]["version"], 1);
  json e = Submit(d, args);
  ASSERT_EQ(d.Quantctl({"watch", e["id"]}).exit_code, 0);
  EXPECT_EQ(Status(d, e["id"])["version"], 3);
}

TEST_F(ServiceE2E, CancelPublishesNothing) {
  const Daemon& d = *daemon_;
  ASSERT_TRUE(d.ok());
  json j = Submit(d, {ExampleModel(), "--calib", ExampleCalib(), "--eval", ExampleEval(), "--method", "quip-sharp",
                      "--bits", "4", "--name", "e2e-cancel"});
  const std::string id = j["id"];
  CommandResult c = d.Quantctl({"cancel", id});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  CommandResult w = d.Quantctl({"watch", id});
  EXPECT_EQ(w.exit_code, 1);
  EXPECT_EQ(Status(d, id)["state"], "JOB_STATE_CANCELLED");
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_FALSE(std::filesystem::exists(d.data_dir() + "/registry/e2e-cancel/1"));
  EXPECT_FALSE(std::filesystem::exists(d.data_dir() + "/registry/.staging/" + id));
}

TEST_F(ServiceE2E, BadRequestsAreRejectedAndDaemonKeepsServing) {
  const Daemon& d = *daemon_;
  ASSERT_TRUE(d.ok());
  const std::string tmp = MakeTempDir("bad");
  // A non-Llama config.
  std::filesystem::create_directories(tmp + "/gpt2");
  std::ofstream(tmp + "/gpt2/config.json") << R"({"architectures":["GPT2LMHeadModel"],"model_type":"gpt2"})";
  // A truncated safetensors file.
  std::filesystem::create_directories(tmp + "/trunc");
  std::filesystem::copy_file(ExampleModel() + "/config.json", tmp + "/trunc/config.json");
  {
    auto bytes = ReadFile(ExampleModel() + "/model.safetensors");
    ASSERT_TRUE(bytes.ok());
    std::ofstream(tmp + "/trunc/model.safetensors", std::ios::binary)
        << bytes->substr(0, bytes->size() / 2);
  }
  // A config.json in the transformers 5 layout with a RoPE type quantd does not implement.
  std::filesystem::create_directories(tmp + "/badrope");
  for (const char* f : {"model.safetensors", "tok512.bin"}) {
    std::filesystem::copy_file(ExampleModel() + "/" + f, tmp + "/badrope/" + f);
  }
  {
    json cfg = json::parse(*ReadFile(ExampleModel() + "/config.json"));
    cfg.erase("rope_theta");
    cfg["rope_parameters"] = {{"rope_type", "proportional"}, {"rope_theta", 10000.0}};
    std::ofstream(tmp + "/badrope/config.json") << cfg.dump();
  }
  struct Case {
    std::string what;
    std::vector<std::string> args;
  };
  const std::vector<Case> cases = {
      {"missing model dir", {tmp + "/nope", "--calib", ExampleCalib(), "--method", "rtn", "--bits", "4", "--name", "x"}},
      {"non-llama config", {tmp + "/gpt2", "--calib", ExampleCalib(), "--method", "rtn", "--bits", "4", "--name", "x"}},
      {"truncated safetensors", {tmp + "/trunc", "--calib", ExampleCalib(), "--method", "rtn", "--bits", "4", "--name", "x"}},
      {"calibration of the wrong type", {ExampleModel(), "--calib", ExampleModel() + "/model.safetensors", "--method", "rtn", "--bits", "4", "--name", "x"}},
      {"unknown method", {ExampleModel(), "--calib", ExampleCalib(), "--method", "magic", "--bits", "4", "--name", "x"}},
      {"bits = 7", {ExampleModel(), "--calib", ExampleCalib(), "--method", "rtn", "--bits", "7", "--name", "x"}},
      {"name with /", {ExampleModel(), "--calib", ExampleCalib(), "--method", "rtn", "--bits", "4", "--name", "a/b"}},
      {"name ..", {ExampleModel(), "--calib", ExampleCalib(), "--method", "rtn", "--bits", "4", "--name", ".."}},
  };
  for (const Case& c : cases) {
    std::vector<std::string> a = {"submit"};
    a.insert(a.end(), c.args.begin(), c.args.end());
    CommandResult r = d.Quantctl(a);
    EXPECT_EQ(r.exit_code, 1) << c.what << ": " << r.out << r.err;
    EXPECT_TRUE(r.err.find("INVALID_ARGUMENT") != std::string::npos ||
                r.err.find("NOT_FOUND") != std::string::npos)
        << c.what << ": " << r.err;
  }
  // An unsupported architecture is refused naming the supported ones (issue 23).
  CommandResult gpt2 = d.Quantctl({"submit", tmp + "/gpt2", "--calib", ExampleCalib(), "--method",
                                   "rtn", "--bits", "4", "--name", "gpt2"});
  for (const char* arch : {"GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM",
                           "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma2ForCausalLM",
                           "Gemma3ForCausalLM"}) {
    EXPECT_NE(gpt2.err.find(arch), std::string::npos) << gpt2.err;
  }
  // The RoPE type is refused at submit, by name, not ignored (issue 19).
  CommandResult badrope = d.Quantctl({"submit", tmp + "/badrope", "--calib", ExampleCalib(),
                                      "--method", "rtn", "--bits", "4", "--name", "badrope"});
  EXPECT_EQ(badrope.exit_code, 1) << badrope.out << badrope.err;
  EXPECT_NE(badrope.err.find("INVALID_ARGUMENT"), std::string::npos) << badrope.err;
  EXPECT_NE(badrope.err.find("rope_parameters.rope_type = \"proportional\" is not supported"),
            std::string::npos)
      << badrope.err;
  // A name with NUL cannot pass through argv; the server-side check is in registry_test.
  CommandResult jobs = d.Quantctl({"jobs"});
  EXPECT_EQ(jobs.exit_code, 0) << jobs.err;
}

}  // namespace
}  // namespace quantd::testing

// FetchModelVersion against an in-process fake RegistryService that can break its stream.
#include "client/model_fetcher.h"

#include <atomic>
#include <filesystem>
#include <map>
#include <mutex>
#include <vector>

#include "common/file_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace quantd::client {
namespace {

namespace v1 = quantd::v1;

// Serves in-memory files in 1000-byte chunks. The first `breaks` calls send one chunk and then
// fail with UNAVAILABLE, like a coordinator that restarts mid-transfer.
class FakeRegistry final : public v1::RegistryService::Service {
 public:
  std::atomic<int> breaks{0};
  std::atomic<int> calls{0};
  // The test thread and the server's handler thread share these; the RPC orders them inside
  // libgrpc, which ThreadSanitizer cannot see, so they are locked.
  std::mutex mu;
  std::map<std::string, std::string> files;  // guarded by mu
  std::vector<uint64_t> offsets;  // requested offsets, in call order; guarded by mu

  std::vector<uint64_t> Offsets() {
    std::lock_guard<std::mutex> l(mu);
    return offsets;
  }
  // Runs fn(files) with the lock held.
  template <typename Fn>
  void EditFiles(Fn fn) {
    std::lock_guard<std::mutex> l(mu);
    fn(files);
  }

  grpc::Status FetchArtifact(grpc::ServerContext*, const v1::FetchArtifactRequest* req,
                             grpc::ServerWriter<v1::Chunk>* writer) override {
    ++calls;
    std::string data;
    {
      std::lock_guard<std::mutex> l(mu);
      offsets.push_back(req->offset());
      auto it = files.find(req->path());
      if (it == files.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, req->path());
      data = it->second;
    }
    if (req->offset() > data.size()) return grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "offset");
    const bool do_break = breaks.fetch_sub(1) > 0;
    for (uint64_t off = req->offset(); off < data.size(); off += 1000) {
      v1::Chunk c;
      c.set_offset(off);
      c.set_data(data.substr(off, 1000));
      writer->Write(c);
      if (do_break) break;
    }
    if (do_break) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "coordinator restarting");
    return grpc::Status::OK;
  }
};

class ModelFetcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    stub_ = v1::RegistryService::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
    dir_ = ::testing::TempDir() + "/quantd_fetch_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override {
    server_->Shutdown();
    std::filesystem::remove_all(dir_);
  }
  // Adds a file to the fake server and to the returned model's file list.
  void AddFile(v1::ModelVersion* mv, const std::string& path, const std::string& data) {
    fake_.EditFiles([&](auto& files) { files[path] = data; });
    v1::ArtifactFile* f = mv->add_files();
    f->set_path(path);
    f->set_size(data.size());
    f->set_sha256(Sha256Hex(data));
  }
  static v1::ModelVersion Model() {
    v1::ModelVersion mv;
    mv.set_name("m");
    mv.set_version(1);
    mv.set_manifest_json(R"({"format_version":1,"method":"rtn","bits":4})");
    return mv;
  }
  static std::string Bytes(size_t n, int seed) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + seed * 7) & 0xff);
    return s;
  }
  FetchOptions FastRetries() {
    FetchOptions o;
    o.initial_backoff = absl::Milliseconds(1);
    return o;
  }

  FakeRegistry fake_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::RegistryService::Stub> stub_;
  std::string dir_;
};

TEST_F(ModelFetcherTest, FetchesVerifiesAndWritesManifestLast) {
  v1::ModelVersion mv = Model();
  AddFile(&mv, "model.safetensors", Bytes(4500, 1));
  AddFile(&mv, "config.json", "{}");
  AddFile(&mv, "tok/empty.bin", "");
  ASSERT_TRUE(FetchModelVersion(*stub_, mv, dir_, FastRetries()).ok());
  EXPECT_EQ(*ReadFile(dir_ + "/model.safetensors"), Bytes(4500, 1));
  EXPECT_EQ(*ReadFile(dir_ + "/config.json"), "{}");
  EXPECT_EQ(*ReadFile(dir_ + "/tok/empty.bin"), "");
  EXPECT_EQ(*ReadFile(dir_ + "/manifest.json"), mv.manifest_json());
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/model.safetensors.part"));

  // A second fetch finds verified files and downloads nothing.
  const int calls = fake_.calls;
  int present = 0;
  FetchOptions o = FastRetries();
  o.on_file = [&present](const std::string&, uint64_t, uint64_t, bool already) {
    present += already;
  };
  ASSERT_TRUE(FetchModelVersion(*stub_, mv, dir_, o).ok());
  EXPECT_EQ(fake_.calls, calls);
  EXPECT_EQ(present, 3);
}

TEST_F(ModelFetcherTest, ResumesFromThePartFileWhenTheStreamBreaks) {
  v1::ModelVersion mv = Model();
  AddFile(&mv, "model.safetensors", Bytes(3500, 2));
  fake_.breaks = 2;
  int retries = 0;
  FetchOptions o = FastRetries();
  o.on_retry = [&retries](const std::string&, const absl::Status& st) {
    EXPECT_TRUE(absl::IsUnavailable(st)) << st;
    ++retries;
  };
  absl::Status st = FetchModelVersion(*stub_, mv, dir_, o);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(retries, 2);
  EXPECT_EQ(fake_.Offsets(), (std::vector<uint64_t>{0, 1000, 2000}));
  EXPECT_EQ(*ReadFile(dir_ + "/model.safetensors"), Bytes(3500, 2));
}

TEST_F(ModelFetcherTest, ResumesAnExistingPartFile) {
  v1::ModelVersion mv = Model();
  const std::string data = Bytes(2500, 3);
  AddFile(&mv, "model.safetensors", data);
  ASSERT_TRUE(MakeDirs(dir_).ok());
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/model.safetensors.part", data.substr(0, 1000)).ok());
  ASSERT_TRUE(FetchModelVersion(*stub_, mv, dir_, FastRetries()).ok());
  EXPECT_EQ(fake_.Offsets(), (std::vector<uint64_t>{1000}));
  EXPECT_EQ(*ReadFile(dir_ + "/model.safetensors"), data);
}

TEST_F(ModelFetcherTest, GivesUpAfterRetriesWithoutProgress) {
  v1::ModelVersion mv = Model();
  AddFile(&mv, "model.safetensors", Bytes(10, 4));
  // The server has nothing: every stream ends short.
  fake_.EditFiles([](auto& files) { files["model.safetensors"] = ""; });
  fake_.breaks = 1000;
  FetchOptions o = FastRetries();
  o.max_retries = 3;
  absl::Status st = FetchModelVersion(*stub_, mv, dir_, o);
  EXPECT_TRUE(absl::IsUnavailable(st)) << st;
  EXPECT_EQ(fake_.calls, 4);
}

TEST_F(ModelFetcherTest, ChecksumMismatchIsDataLossAndDeletesThePart) {
  v1::ModelVersion mv = Model();
  AddFile(&mv, "model.safetensors", Bytes(1500, 5));
  // Same size, different bytes.
  fake_.EditFiles([](auto& files) { files["model.safetensors"][700] ^= 1; });
  absl::Status st = FetchModelVersion(*stub_, mv, dir_, FastRetries());
  EXPECT_TRUE(absl::IsDataLoss(st)) << st;
  EXPECT_NE(st.message().find("sha256"), std::string::npos) << st;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/model.safetensors.part"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/model.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/manifest.json"));
}

TEST_F(ModelFetcherTest, ShortStreamIsDataLoss) {
  v1::ModelVersion mv = Model();
  AddFile(&mv, "model.safetensors", Bytes(1500, 6));
  fake_.EditFiles([](auto& files) { files["model.safetensors"].resize(1200); });
  absl::Status st = FetchModelVersion(*stub_, mv, dir_, FastRetries());
  EXPECT_TRUE(absl::IsDataLoss(st)) << st;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/model.safetensors.part"));
}

TEST_F(ModelFetcherTest, RejectsPathTraversalBeforeWritingAnything) {
  for (const char* bad : {"../escape", "/etc/evil", "a/../../escape"}) {
    v1::ModelVersion mv = Model();
    AddFile(&mv, "model.safetensors", Bytes(100, 7));
    AddFile(&mv, bad, "evil");
    absl::Status st = FetchModelVersion(*stub_, mv, dir_, FastRetries());
    EXPECT_TRUE(absl::IsInvalidArgument(st)) << bad << ": " << st;
    EXPECT_FALSE(std::filesystem::exists(dir_)) << bad;
    EXPECT_EQ(fake_.calls, 0);
  }
}

TEST_F(ModelFetcherTest, ServerErrorsPassThrough) {
  v1::ModelVersion mv = Model();
  v1::ArtifactFile* f = mv.add_files();
  f->set_path("missing.bin");
  f->set_size(3);
  absl::Status st = FetchModelVersion(*stub_, mv, dir_, FastRetries());
  EXPECT_TRUE(absl::IsNotFound(st)) << st;
  EXPECT_NE(st.message().find("missing.bin"), std::string::npos);
}

}  // namespace
}  // namespace quantd::client

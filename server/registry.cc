#include "server/registry.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace quantd::server {
namespace fs = std::filesystem;
using json = nlohmann::json;

bool IsValidModelName(std::string_view name) {
  if (name.empty() || name.size() > 128) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (i == 0 && !alnum) return false;
    if (!alnum && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

Registry::Registry(std::string root) : root_(std::move(root)) {}

namespace {
constexpr char kTombstone[] = "deleted.json";

// Removes everything in a tombstone directory but its deleted.json.
absl::Status ClearTombstone(const std::string& dir) {
  std::error_code ec;
  std::vector<fs::path> doomed;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().filename() != kTombstone) doomed.push_back(e.path());
  }
  if (ec) return absl::InternalError(absl::StrCat("listing ", dir, ": ", ec.message()));
  for (const fs::path& p : doomed) QUANTD_RETURN_IF_ERROR(RemoveAll(p.string()));
  return SyncDir(dir);
}
}  // namespace

absl::Status Registry::Init() {
  QUANTD_RETURN_IF_ERROR(MakeDirs(root_));
  QUANTD_RETURN_IF_ERROR(MakeDirs(JoinPath(root_, ".staging")));
  std::error_code ec;
  for (const auto& m : fs::directory_iterator(root_, ec)) {
    if (!m.is_directory() || !IsValidModelName(m.path().filename().string())) continue;
    for (const auto& v : fs::directory_iterator(m.path(), ec)) {
      if (fs::exists(v.path() / kTombstone) && !fs::exists(v.path() / "manifest.json")) {
        QUANTD_RETURN_IF_ERROR(ClearTombstone(v.path().string()));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<quantd::v1::ModelVersion> Registry::Delete(const std::string& name, int version) {
  if (!IsValidModelName(name)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid model name '", name, "'"));
  }
  if (version < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("version must be >= 1 to delete (got ", version, "): name it explicitly"));
  }
  MutexLock l(&publish_mu_);
  QUANTD_ASSIGN_OR_RETURN(quantd::v1::ModelVersion mv, Get(name, version));
  const std::string dir = JoinPath(JoinPath(root_, name), std::to_string(version));
  const std::string manifest = JoinPath(dir, "manifest.json");
  const std::string tomb = JoinPath(dir, kTombstone);
  if (std::rename(manifest.c_str(), tomb.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("delete ", name, "@", version, ": rename ", manifest,
                                            " failed"));
  }
  QUANTD_RETURN_IF_ERROR(SyncDir(dir));
  QUANTD_RETURN_IF_ERROR(ClearTombstone(dir));
  return mv;
}

std::string Registry::StagingDir(const std::string& job_id) const {
  return JoinPath(JoinPath(root_, ".staging"), job_id);
}

std::vector<int> Registry::Versions(const std::string& name) const {
  std::vector<int> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(JoinPath(root_, name), ec)) {
    const std::string v = e.path().filename().string();
    if (v.empty() || v.size() > 9 || !std::all_of(v.begin(), v.end(), ::isdigit)) continue;
    if (!fs::exists(e.path() / "manifest.json")) continue;
    out.push_back(std::stoi(v));
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<int> Registry::Publish(const std::string& name, const std::string& staging_dir) {
  if (!IsValidModelName(name)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid model name '", name, "'"));
  }
  MutexLock l(&publish_mu_);
  const std::string model_dir = JoinPath(root_, name);
  QUANTD_RETURN_IF_ERROR(MakeDirs(model_dir));
  std::vector<int> versions = Versions(name);
  int next = versions.empty() ? 1 : versions.back() + 1;
  // Also skip numbers whose directory exists without a manifest (never published).
  while (fs::exists(JoinPath(model_dir, std::to_string(next)))) ++next;
  const std::string manifest_path = JoinPath(staging_dir, "manifest.json");
  QUANTD_ASSIGN_OR_RETURN(std::string text, ReadFile(manifest_path));
  json m = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (m.is_discarded() || !m.is_object()) {
    return absl::InternalError(absl::StrCat("staged manifest ", manifest_path, " is not JSON"));
  }
  m["version"] = next;
  QUANTD_RETURN_IF_ERROR(WriteFileAtomic(manifest_path, m.dump(2) + "\n"));
  QUANTD_RETURN_IF_ERROR(SyncDir(staging_dir));
  const std::string dest = JoinPath(model_dir, std::to_string(next));
  if (std::rename(staging_dir.c_str(), dest.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("publish ", staging_dir, " -> ", dest, " failed"));
  }
  QUANTD_RETURN_IF_ERROR(SyncDir(model_dir));
  QUANTD_RETURN_IF_ERROR(SyncDir(JoinPath(root_, ".staging")));
  return next;
}

absl::StatusOr<quantd::v1::ModelVersion> Registry::Load(const std::string& name,
                                                        int version) const {
  const std::string dir = JoinPath(JoinPath(root_, name), std::to_string(version));
  QUANTD_ASSIGN_OR_RETURN(std::string text, ReadFile(JoinPath(dir, "manifest.json"), 64 << 20));
  json m = json::parse(text, nullptr, false);
  if (m.is_discarded() || !m.is_object() || !m.contains("files") || !m["files"].is_array()) {
    return absl::DataLossError(absl::StrCat("manifest of ", name, "@", version, " is corrupt"));
  }
  quantd::v1::ModelVersion mv;
  mv.set_name(name);
  mv.set_version(version);
  mv.set_manifest_json(text);
  for (const auto& f : m["files"]) {
    if (!f.is_object() || !f.contains("path") || !f["path"].is_string() || !f.contains("size") ||
        !f["size"].is_number_unsigned() || !f.contains("sha256") || !f["sha256"].is_string()) {
      return absl::DataLossError(absl::StrCat("manifest of ", name, "@", version,
                                              " has a malformed file entry"));
    }
    auto* af = mv.add_files();
    af->set_path(f["path"].get<std::string>());
    af->set_size(f["size"].get<uint64_t>());
    af->set_sha256(f["sha256"].get<std::string>());
  }
  return mv;
}

absl::StatusOr<quantd::v1::ModelVersion> Registry::Get(const std::string& name,
                                                       int version) const {
  if (!IsValidModelName(name)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid model name '", name, "'"));
  }
  if (version < 0) return absl::InvalidArgumentError("version must be >= 0");
  std::vector<int> versions = Versions(name);
  if (versions.empty()) return absl::NotFoundError(absl::StrCat("no model named ", name));
  if (version == 0) version = versions.back();
  if (!std::binary_search(versions.begin(), versions.end(), version)) {
    return absl::NotFoundError(absl::StrCat("model ", name, " has no version ", version));
  }
  return Load(name, version);
}

absl::StatusOr<std::vector<quantd::v1::ModelVersion>> Registry::List(
    const std::string& name) const {
  std::vector<std::string> names;
  if (!name.empty()) {
    if (!IsValidModelName(name)) {
      return absl::InvalidArgumentError(absl::StrCat("invalid model name '", name, "'"));
    }
    names.push_back(name);
  } else {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(root_, ec)) {
      std::string n = e.path().filename().string();
      if (e.is_directory() && IsValidModelName(n)) names.push_back(n);
    }
    std::sort(names.begin(), names.end());
  }
  std::vector<quantd::v1::ModelVersion> out;
  for (const std::string& n : names) {
    for (int v : Versions(n)) {
      QUANTD_ASSIGN_OR_RETURN(auto mv, Load(n, v));
      out.push_back(std::move(mv));
    }
  }
  return out;
}

absl::StatusOr<std::string> Registry::VerifiedFile(const std::string& name, int version,
                                                   const std::string& path) {
  QUANTD_ASSIGN_OR_RETURN(quantd::v1::ModelVersion mv, Get(name, version));
  const quantd::v1::ArtifactFile* entry = nullptr;
  for (const auto& f : mv.files()) {
    if (f.path() == path) entry = &f;
  }
  if (entry == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("model ", name, "@", mv.version(), " has no file '", path, "'"));
  }
  const std::string full =
      JoinPath(JoinPath(JoinPath(root_, name), std::to_string(mv.version())), path);
  struct stat st;
  if (::stat(full.c_str(), &st) != 0) {
    return absl::DataLossError(absl::StrCat("file ", path, " of ", name, "@", mv.version(),
                                            " is missing from the registry"));
  }
  if (static_cast<uint64_t>(st.st_size) != entry->size()) {
    return absl::DataLossError(absl::StrCat("file ", path, " of ", name, "@", mv.version(),
                                            " has ", st.st_size, " bytes, manifest says ",
                                            entry->size()));
  }
  const std::string key = absl::StrCat(full, "|", st.st_size, "|", st.st_mtim.tv_sec, ".",
                                       st.st_mtim.tv_nsec);
  {
    MutexLock l(&cache_mu_);
    auto it = verified_.find(key);
    if (it != verified_.end() && it->second == entry->sha256()) return full;
  }
  QUANTD_ASSIGN_OR_RETURN(std::string digest, Sha256File(full));
  if (digest != entry->sha256()) {
    return absl::DataLossError(absl::StrCat("file ", path, " of ", name, "@", mv.version(),
                                            " fails its checksum: sha256 ", digest,
                                            ", manifest says ", entry->sha256()));
  }
  MutexLock l(&cache_mu_);
  verified_[key] = digest;
  return full;
}

}  // namespace quantd::server

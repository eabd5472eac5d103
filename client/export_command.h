// Engine exports of a native artifact directory (docs/formats/exports.md): the step
// `quantctl fetch --format gguf` runs after the download, and the local command
// `quantctl export NATIVE_DIR -o DIR --format gguf` (no server; the Python client calls it).
#ifndef QUANTD_CLIENT_EXPORT_COMMAND_H_
#define QUANTD_CLIENT_EXPORT_COMMAND_H_

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/artifact/export_formats.h"

namespace quantd::client {

// Checks the version's manifest (CheckExportable), writes DIR/model.gguf and
// DIR/quantd_manifest.json, and returns the one-line summary to print. FAILED_PRECONDITION
// for a version that does not fit `format`, UNIMPLEMENTED for formats not written yet, and the
// exporter's errors.
absl::StatusOr<std::string> WriteEngineExport(const std::string& native_dir,
                                              const std::string& out_dir,
                                              artifact::ExportFormat format);

// args: the words after "export". Returns the exit code (0 ok, 1 error, 2 usage).
int RunExportCommand(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace quantd::client

#endif  // QUANTD_CLIENT_EXPORT_COMMAND_H_

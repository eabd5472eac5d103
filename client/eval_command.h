// `quantctl eval MODEL_DIR --data TOKENS|TEXT.txt [--context N] [--json]`: perplexity of a local model
// directory, either a source checkpoint (config.json + safetensors) or a fetched native
// artifact (its .qweight tensors are dequantized). Runs locally; needs no server.
#ifndef QUANTD_CLIENT_EVAL_COMMAND_H_
#define QUANTD_CLIENT_EVAL_COMMAND_H_

#include <ostream>
#include <string>
#include <vector>

namespace quantd::client {

// args: the words after "eval". Returns the exit code (0 ok, 1 error, 2 usage).
int RunEvalCommand(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace quantd::client

#endif  // QUANTD_CLIENT_EVAL_COMMAND_H_

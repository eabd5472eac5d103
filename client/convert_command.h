// `quantctl convert-gguf IN.gguf -o DIR [--dtype f16|bf16|f32]`: converts a llama-architecture
// GGUF file into a Hugging Face model directory (config.json, model.safetensors,
// tokenizer.json, tokenizer_config.json). Runs locally; needs no server.
#ifndef QUANTD_CLIENT_CONVERT_COMMAND_H_
#define QUANTD_CLIENT_CONVERT_COMMAND_H_

#include <ostream>
#include <string>
#include <vector>

namespace quantd::client {

// args: the words after "convert-gguf". Returns the exit code (0 ok, 1 error, 2 usage).
int RunConvertGgufCommand(const std::vector<std::string>& args, std::ostream& out,
                          std::ostream& err);

}  // namespace quantd::client

#endif  // QUANTD_CLIENT_CONVERT_COMMAND_H_

// quantctl: command-line client of quantd. Collects argv, $QUANTD_ADDR and whether stdout /
// stderr are terminals, and hands them to the client library (commands.h).
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "client/commands.h"
#include "client/convert_command.h"
#include "client/eval_command.h"
#include "client/export_command.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && args[0] == "eval") {  // local command: no server involved
    return quantd::client::RunEvalCommand({args.begin() + 1, args.end()}, std::cout, std::cerr);
  }
  if (!args.empty() && args[0] == "export") {  // local command: native artifact -> engine format
    return quantd::client::RunExportCommand({args.begin() + 1, args.end()}, std::cout, std::cerr);
  }
  if (!args.empty() && args[0] == "convert-gguf") {  // local command
    return quantd::client::RunConvertGgufCommand({args.begin() + 1, args.end()}, std::cout,
                                                 std::cerr);
  }
  quantd::client::Streams io{std::cout, std::cerr, isatty(STDOUT_FILENO) == 1,
                             isatty(STDERR_FILENO) == 1};
  struct winsize ws {};
  for (int fd : {STDOUT_FILENO, STDERR_FILENO}) {
    if (io.columns == 0 && ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) io.columns = ws.ws_col;
  }
  return quantd::client::RunQuantctl(args, std::getenv("QUANTD_ADDR"), io);
}

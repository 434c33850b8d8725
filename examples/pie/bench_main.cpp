// The standalone `pie_bench` (host code): `pie_bench MODEL ...` is `pie bench MODEL ...`. The
// benchmark itself (bench.cpp, CUDA) is compiled once and linked into both `pie` and `pie_bench`.
#include <algorithm>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench.hpp"

int main(int argc, char** argv) {
  CLI::App app{"pie_bench: pie's GPU benchmark (the `pie bench` subcommand)"};
  pie::cli::BenchOptions o;
  CLI::App* sub = pie::cli::add_bench_command(app, o);
  app.require_subcommand(0, 1);
  // Accept both `pie_bench bench MODEL ...` and `pie_bench MODEL ...`.
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] != "bench") args.insert(args.begin(), "bench");
  std::reverse(args.begin(), args.end());
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  (void)sub;
  return pie::cli::run_bench(o);
}

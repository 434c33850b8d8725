/// \file main.cpp
/// \brief The `pie` program: one subcommand per file (generate.cpp, serve.cpp, ...); main only
/// registers them and dispatches.
#include <CLI/CLI.hpp>

#include "generate.hpp"
#if defined(PIE_HAVE_SERVE)
#include "serve.hpp"
#endif
#if defined(PIE_HAVE_BENCH)
#include "bench.hpp"
#endif

int main(int argc, char** argv) {
  CLI::App app{"pie: paged inference engine"};
  app.require_subcommand(1);
  pie::cli::GenerateOptions gen;
  CLI::App* generate = pie::cli::add_generate_command(app, gen);
#if defined(PIE_HAVE_SERVE)
  pie::server::ServeOptions serve_opts;
  CLI::App* serve = pie::cli::add_serve_command(app, serve_opts);
#endif
#if defined(PIE_HAVE_BENCH)
  pie::cli::BenchOptions bench_opts;
  CLI::App* bench = pie::cli::add_bench_command(app, bench_opts);
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help exits 0; any flag error exits 2, as argparse (and so vLLM) does.
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (generate->parsed()) return pie::cli::run_generate(gen);
#if defined(PIE_HAVE_SERVE)
  if (serve->parsed()) return pie::cli::run_serve(serve_opts);
#endif
#if defined(PIE_HAVE_BENCH)
  if (bench->parsed()) return pie::cli::run_bench(bench_opts);
#endif
  return 2;
}

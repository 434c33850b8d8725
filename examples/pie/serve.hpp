#pragma once
/// \file serve.hpp
/// \brief The `serve` subcommand of the `pie` program: declared here, defined in serve.cpp, so
/// main.cpp only registers it and calls it.
#include <CLI/CLI.hpp>

#include "pie/server/serve_options.hpp"

namespace pie::cli {

/// Adds `serve` with all its flags to `app`; the flags write into `opts`.
CLI::App* add_serve_command(CLI::App& app, pie::server::ServeOptions& opts);

/// Runs the server until SIGINT/SIGTERM. Returns the process exit code: 0 after a graceful
/// stop, 1 when the model fails to load or the port cannot be bound, 2 for unusable flags.
int run_serve(const pie::server::ServeOptions& opts);

}  // namespace pie::cli

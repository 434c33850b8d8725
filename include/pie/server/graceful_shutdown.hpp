#pragma once
/// \file graceful_shutdown.hpp
/// \brief The drain of `pie serve` on SIGTERM/SIGINT: from the signal on, /health answers 503
/// and new requests get a 503 in OpenAI's shape, while the requests in flight run on, for up
/// to --shutdown-timeout seconds. Whatever is still running then is aborted by the caller
/// (EngineService::stop): streams end with `finish_reason: "abort"` and `data: [DONE]`,
/// non-streaming requests get their partial text with `finish_reason: "abort"`. A second
/// signal ends the drain at once.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <iostream>

#include "pie/server/engine_service.hpp"
#include "pie/server/http.hpp"

namespace pie::server {

/// Drains `service` (see the file comment); returns when nothing is in flight, the timeout has
/// passed, or another of `sigs` arrived. `sigs` must be blocked in every thread.
inline void drain(GenerationService& service, const HttpServer& http, const sigset_t& sigs, double timeout_s) {
  service.begin_drain();
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  const int at_start = service.in_flight();
  if (at_start > 0)
    std::cout << "pie serve: draining " << at_start << " in-flight request(s) for up to " << timeout_s
              << " s (--shutdown-timeout)" << std::endl;
  while (service.in_flight() > 0 || http.active_streams() > 0) {
    if (Clock::now() >= deadline) {
      std::cout << "pie serve: shutdown timeout: aborting " << service.in_flight() << " request(s)" << std::endl;
      return;
    }
    const timespec tick{0, 20'000'000};
    const int sig = sigtimedwait(&sigs, nullptr, &tick);
    if (sig == SIGINT || sig == SIGTERM) {
      std::cout << "pie serve: second signal: aborting " << service.in_flight() << " request(s)" << std::endl;
      return;
    }
  }
  // The engine has finished them all; give the handlers a moment to write their responses.
  const timespec flush{0, 100'000'000};
  sigtimedwait(&sigs, nullptr, &flush);
}

}  // namespace pie::server

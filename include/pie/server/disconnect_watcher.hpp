#pragma once
/// \file disconnect_watcher.hpp
/// \brief Sees a client hang up while its request is still generating. One epoll thread waits
/// for EPOLLRDHUP/EPOLLHUP/EPOLLERR on the sockets of requests in flight and runs their
/// callback (which cancels the engine requests: the engine thread aborts them, freeing their KV
/// blocks, before its next step). A non-streaming response writes nothing until it is done, so
/// without this its client's disconnect went unseen until then; a stream saw it only on its
/// next write. EOF counts as a hang-up, as in uvicorn (vLLM's server): an HTTP/1.1 client does
/// not half-close while it waits for its response.
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>

#include "pie/core/error.hpp"

namespace pie::server {

/// \brief The epoll thread and its table of watched sockets.
class DisconnectWatcher {
 public:
  DisconnectWatcher() {
    ep_ = ::epoll_create1(EPOLL_CLOEXEC);
    PIE_CHECK(ep_ >= 0, "epoll_create1 failed");
    wake_ = ::eventfd(0, EFD_CLOEXEC);
    PIE_CHECK(wake_ >= 0, "eventfd failed");
    thread_ = std::thread([this] { run(); });
  }
  ~DisconnectWatcher() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    const uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_, &one, sizeof(one));
    thread_.join();
    ::close(wake_);
    ::close(ep_);
  }
  DisconnectWatcher(const DisconnectWatcher&) = delete;
  DisconnectWatcher& operator=(const DisconnectWatcher&) = delete;

  /// \brief Unwatches its socket when it goes (before the socket can be closed and reused).
  class Guard {
   public:
    Guard() = default;
    Guard(DisconnectWatcher* w, uint64_t id) : w_(w), id_(id) {}
    Guard(Guard&& o) noexcept : w_(std::exchange(o.w_, nullptr)), id_(o.id_) {}
    Guard& operator=(Guard&& o) noexcept {
      reset();
      w_ = std::exchange(o.w_, nullptr);
      id_ = o.id_;
      return *this;
    }
    ~Guard() { reset(); }
    void reset() {
      if (w_) w_->unwatch(id_);
      w_ = nullptr;
    }

   private:
    DisconnectWatcher* w_ = nullptr;
    uint64_t id_ = 0;
  };

  /// Calls `gone` once (on the watcher's thread) if `sock`'s peer hangs up while the guard lives.
  /// A socket < 0 (no connection: tests, in-process callers) is not watched.
  Guard watch(int sock, std::function<void()> gone) {
    if (sock < 0) return {};
    std::lock_guard lk(mu_);
    const uint64_t id = ++next_;
    epoll_event ev{};
    ev.events = EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLONESHOT;
    ev.data.u64 = id;
    if (::epoll_ctl(ep_, EPOLL_CTL_ADD, sock, &ev) != 0) return {};
    entries_.emplace(id, Entry{sock, std::move(gone)});
    return Guard(this, id);
  }

  /// Hang-ups seen so far.
  uint64_t disconnects() const {
    std::lock_guard lk(mu_);
    return disconnects_;
  }

 private:
  struct Entry {
    int sock;
    std::function<void()> gone;
  };

  void unwatch(uint64_t id) {
    std::lock_guard lk(mu_);  // also waits out a callback of this entry that is running
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    ::epoll_ctl(ep_, EPOLL_CTL_DEL, it->second.sock, nullptr);
    entries_.erase(it);
  }

  void run() {
    {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = 0;  // the wake-up descriptor
      ::epoll_ctl(ep_, EPOLL_CTL_ADD, wake_, &ev);
    }
    epoll_event evs[64];
    for (;;) {
      const int n = ::epoll_wait(ep_, evs, 64, -1);
      if (n < 0 && errno != EINTR) return;
      std::lock_guard lk(mu_);
      if (stop_) return;
      for (int i = 0; i < n; ++i) {
        auto it = entries_.find(evs[i].data.u64);
        if (it == entries_.end()) continue;  // the wake-up, or unwatched meanwhile
        ++disconnects_;
        // One-shot: the entry stays until its guard goes, so the socket is deleted from the
        // set before it is closed.
        if (it->second.gone) std::exchange(it->second.gone, nullptr)();
      }
    }
  }

  mutable std::mutex mu_;
  int ep_ = -1, wake_ = -1;
  bool stop_ = false;
  uint64_t next_ = 0, disconnects_ = 0;
  std::unordered_map<uint64_t, Entry> entries_;
  std::thread thread_;
};

}  // namespace pie::server

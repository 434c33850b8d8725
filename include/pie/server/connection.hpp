#pragma once
/// \file connection.hpp
/// \brief The connection loop under cpp-httplib: pie's own per-connection loop (ConnServer), so
/// that (1) a request must arrive whole within a deadline or gets 408, whatever its pace (a
/// socket dribbling a byte every 2 s used to hold a handler thread forever: httplib's read
/// timeout is per recv() call); (2) a handler knows its client's socket (current_client_socket(),
/// for the disconnect watcher), which httplib 0.11 does not expose; and (3) a connection gets its
/// own thread (ThreadPerConnection) instead of waiting in a fixed pool behind slow or idle sockets.
/// httplib still parses, routes and writes every request and response (Server::process_request).
/// Linux only (poll, MSG_NOSIGNAL), as the rest of the server.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>

namespace pie::server {

namespace detail {
inline thread_local int tls_client_socket = -1;
}  // namespace detail

/// The socket of the connection whose request this thread is serving (-1 outside a handler).
inline int current_client_socket() { return detail::tls_client_socket; }

/// \brief Read and idle limits of a connection.
struct ConnLimits {
  double request_timeout_s = 10;     ///< a request (line, headers, body) must arrive within this: else 408
  double keep_alive_timeout_s = 5;   ///< an idle keep-alive connection is closed after this
  double write_timeout_s = 30;       ///< a client that reads nothing for this long is dropped
  size_t keep_alive_max_count = 1000;
};

/// \brief httplib::Stream over a socket, with a deadline on reads while a request is read.
class DeadlineStream final : public httplib::Stream {
 public:
  using Clock = std::chrono::steady_clock;
  /// `stopped()` → true once the server stops: a read in progress gives up.
  DeadlineStream(int sock, const ConnLimits& lim, std::function<bool()> stopped)
      : sock_(sock), lim_(lim), stopped_(std::move(stopped)) {}

  /// Starts reading a request: reads must complete by now + request_timeout_s.
  void begin_request() {
    deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(lim_.request_timeout_s));
    timed_out_ = false;
    wrote_ = false;
  }
  bool timed_out() const { return timed_out_; }
  bool wrote() const { return wrote_; }

  bool is_readable() const override { return wait(POLLIN, remaining_ms()) > 0; }
  bool is_writable() const override { return wait(POLLOUT, 0) > 0; }

  ssize_t read(char* ptr, size_t size) override {
    for (;;) {
      const int ms = remaining_ms();
      if (stopped_ && stopped_()) return -1;
      if (ms <= 0) {
        timed_out_ = true;
        return -1;
      }
      const int r = wait(POLLIN, ms);
      if (r < 0) return -1;
      if (r == 0) continue;  // re-check the deadline
      const ssize_t n = ::recv(sock_, ptr, size, 0);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      return n;
    }
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (timed_out_) return -1;  // the request timed out: the connection gets the 408, nothing else
    const int ms = static_cast<int>(lim_.write_timeout_s * 1000);
    if (wait(POLLOUT, ms) <= 0) return -1;
    ssize_t n;
    do n = ::send(sock_, ptr, size, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n > 0) wrote_ = true;
    return n;
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override { addr(true, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { addr(false, ip, port); }
  socket_t socket() const override { return sock_; }

 private:
  int remaining_ms() const {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now()).count();
    return left <= 0 ? 0 : static_cast<int>(std::min<long long>(left, 100));  // slices: see stop()
  }
  int wait(short events, int ms) const {
    pollfd p{sock_, events, 0};
    int r;
    do r = ::poll(&p, 1, ms);
    while (r < 0 && errno == EINTR);
    if (r > 0 && (p.revents & (POLLERR | POLLNVAL))) return -1;
    return r;
  }
  void addr(bool peer, std::string& ip, int& port) const {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    const int r = peer ? ::getpeername(sock_, reinterpret_cast<sockaddr*>(&ss), &len)
                       : ::getsockname(sock_, reinterpret_cast<sockaddr*>(&ss), &len);
    ip.clear();
    port = -1;
    if (r != 0) return;
    char host[64] = {};
    if (ss.ss_family == AF_INET) {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
      port = ntohs(a->sin_port);
    } else if (ss.ss_family == AF_INET6) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
      ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
      port = ntohs(a->sin6_port);
    }
    ip = host;
  }

  int sock_;
  ConnLimits lim_;
  Clock::time_point deadline_ = Clock::now();
  bool timed_out_ = false;
  bool wrote_ = false;
  std::function<bool()> stopped_;
};

/// \brief A thread per connection, joined at shutdown (httplib's ThreadPool makes the 529th
/// connection wait behind 528 slow ones), up to `max_threads`: past that (or when the system
/// refuses a thread) a connection waits for the next thread to finish its own. The state lives
/// in a shared block so a finishing thread never touches a queue that shutdown() has let go.
class ThreadPerConnection final : public httplib::TaskQueue {
 public:
  explicit ThreadPerConnection(int max_threads = 10000) { s_->max = max_threads; }

  void enqueue(std::function<void()> fn) override {
    std::unique_lock lk(s_->mu);
    if (s_->active >= s_->max) {
      s_->pending.push_back(std::move(fn));
      return;
    }
    ++s_->active;
    lk.unlock();
    try {
      std::thread(run, s_, std::move(fn)).detach();
    } catch (const std::system_error&) {  // out of threads: queue it behind the running ones
      lk.lock();
      --s_->active;
      if (s_->active > 0) {
        s_->pending.push_back(std::move(fn));
        return;
      }
      lk.unlock();
      fn();  // no thread would ever take it: serve it here
    }
  }
  void shutdown() override {
    std::unique_lock lk(s_->mu);
    s_->cv.wait(lk, [&] { return s_->active == 0 && s_->pending.empty(); });
  }

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    int active = 0, max = 0;
    std::deque<std::function<void()>> pending;
  };
  static void run(std::shared_ptr<State> s, std::function<void()> fn) {
    for (;;) {
      fn();
      std::lock_guard lk(s->mu);
      if (s->pending.empty()) {
        if (--s->active == 0) s->cv.notify_all();
        return;
      }
      fn = std::move(s->pending.front());
      s->pending.pop_front();
    }
  }
  std::shared_ptr<State> s_ = std::make_shared<State>();
};

/// \brief httplib::Server whose connections run pie's loop: keep-alive with an idle timeout, a
/// deadline per request (408 in OpenAI's shape when it passes), the socket visible to handlers.
class ConnServer : public httplib::Server {
 public:
  /// `timeout_body` is the JSON body of the 408.
  ConnServer(ConnLimits lim, std::string timeout_body) : lim_(lim), timeout_body_(std::move(timeout_body)) {
    new_task_queue = [] { return new ThreadPerConnection; };
  }

 private:
  bool process_and_close_socket(socket_t sock) override {
    DeadlineStream strm(sock, lim_, [this] { return svr_sock_ == INVALID_SOCKET; });
    detail::tls_client_socket = sock;
    bool ret = false;
    for (size_t count = lim_.keep_alive_max_count; count > 0; --count) {
      // A fresh connection must send its request within the request deadline; between
      // requests of a keep-alive connection, the idle timeout closes it silently.
      const bool first = count == lim_.keep_alive_max_count;
      if (!first && !wait_next(sock)) break;
      strm.begin_request();
      bool closed = false;
      ret = process_request(strm, count == 1 || svr_sock_ == INVALID_SOCKET, closed, nullptr);
      if (strm.timed_out() && !strm.wrote()) {
        const std::string head = "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: " +
                                 std::to_string(timeout_body_.size()) + "\r\nConnection: close\r\n\r\n";
        const std::string out = head + timeout_body_;
        ::send(sock, out.data(), out.size(), MSG_NOSIGNAL);
        ++timeouts_;
        break;
      }
      if (!ret || closed) break;
    }
    detail::tls_client_socket = -1;
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    return ret;
  }

  /// Waits for the next request's first byte, up to the keep-alive timeout or a server stop.
  bool wait_next(int sock) const {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                           std::chrono::duration<double>(lim_.keep_alive_timeout_s));
    while (svr_sock_ != INVALID_SOCKET && std::chrono::steady_clock::now() < end) {
      pollfd p{sock, POLLIN, 0};
      const int r = ::poll(&p, 1, 100);
      if (r > 0) return (p.revents & POLLIN) != 0;
      if (r < 0 && errno != EINTR) return false;
    }
    return false;
  }

 public:
  /// httplib 0.11 listens with a backlog of 5: a burst of connections overflows it and clients
  /// see resets. A second listen() on the bound socket raises it (capped by net.core.somaxconn).
  void widen_backlog(int n = 4096) {
    if (svr_sock_ != INVALID_SOCKET) ::listen(svr_sock_, n);
  }
  /// Connections closed with 408 so far.
  uint64_t timeouts() const { return timeouts_.load(); }

 private:
  ConnLimits lim_;
  std::string timeout_body_;
  std::atomic<uint64_t> timeouts_{0};
};

}  // namespace pie::server

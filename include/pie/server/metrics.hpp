#pragma once
/// \file metrics.hpp
/// \brief Server metrics in the Prometheus text format (version 0.0.4), named like vLLM's with a
/// `pie:` prefix so existing dashboards need only the prefix changed: request gauges, KV usage,
/// prefix-cache counters, token counters and latency histograms.
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

namespace pie::server {

/// \brief A Prometheus histogram with fixed upper bounds; thread-safe.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size(), 0) {}

  void observe(double v) {
    std::lock_guard lk(mu_);
    for (size_t i = 0; i < bounds_.size(); ++i)
      if (v <= bounds_[i]) ++counts_[i];
    sum_ += v;
    ++count_;
  }

  uint64_t count() const {
    std::lock_guard lk(mu_);
    return count_;
  }

  /// Appends the `_bucket` (cumulative, ending with +Inf), `_sum` and `_count` lines.
  void render(std::string& out, const std::string& name, const std::string& labels) const {
    std::lock_guard lk(mu_);
    char buf[64];
    for (size_t i = 0; i < bounds_.size(); ++i) {
      std::snprintf(buf, sizeof buf, "%g", bounds_[i]);
      out += name + "_bucket{" + labels + ",le=\"" + buf + "\"} " + std::to_string(counts_[i]) + "\n";
    }
    out += name + "_bucket{" + labels + ",le=\"+Inf\"} " + std::to_string(count_) + "\n";
    std::snprintf(buf, sizeof buf, "%.9g", sum_);
    out += name + "_sum{" + labels + "} " + buf + "\n";
    out += name + "_count{" + labels + "} " + std::to_string(count_) + "\n";
  }

 private:
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // cumulative: counts_[i] = observations <= bounds_[i]
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

/// \brief The engine's state sampled at scrape time (gauges and the engine's own counters).
struct EngineGauges {
  int num_running = 0;
  int num_waiting = 0;
  double kv_usage = 0.0;              ///< fraction of KV blocks in use, [0, 1]
  uint64_t prefix_cache_queries = 0;  ///< tokens looked up in the prefix cache
  uint64_t prefix_cache_hits = 0;     ///< of those, tokens found
};

/// \brief Everything /metrics reports that the server itself counts.
class ServerMetrics {
 public:
  enum Finish { kStop = 0, kLength = 1, kAbort = 2, kNumFinish = 3 };

  std::atomic<uint64_t> prompt_tokens{0};
  std::atomic<uint64_t> generation_tokens{0};
  std::array<std::atomic<uint64_t>, kNumFinish> requests_finished{};
  std::atomic<uint64_t> http_requests{0};
  std::atomic<uint64_t> http_errors{0};

  Histogram time_to_first_token{{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,  0.75,
                                 1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0}};
  Histogram inter_token_latency{{0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
                                 0.1,   0.15,   0.2,   0.3,  0.4,   0.5,  0.75,  1.0,  2.5,  5.0,  10.0}};
  Histogram e2e_request_latency{{0.3,  0.5,  0.8,  1.0,  1.5,  2.0,   2.5,   5.0,   10.0,  15.0,
                                 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0}};
  Histogram request_queue_time{
      {0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0}};

  /// The whole exposition: HELP/TYPE once per family, every sample labelled with the model.
  std::string render(const std::string& model_name, const EngineGauges& g) const {
    const std::string labels = "model_name=\"" + escape(model_name) + "\"";
    std::string out;
    auto family = [&](const char* name, const char* type, const char* help) {
      out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
    };
    auto sample = [&](const char* name, const std::string& value, const std::string& extra = {}) {
      out += std::string(name) + "{" + labels + extra + "} " + value + "\n";
    };
    char buf[64];
    family("pie:num_requests_running", "gauge", "Number of requests in model execution batches.");
    sample("pie:num_requests_running", std::to_string(g.num_running));
    family("pie:num_requests_waiting", "gauge", "Number of requests waiting to be processed.");
    sample("pie:num_requests_waiting", std::to_string(g.num_waiting));
    family("pie:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.");
    std::snprintf(buf, sizeof buf, "%.9g", g.kv_usage);
    sample("pie:kv_cache_usage_perc", buf);
    family("pie:prefix_cache_queries_total", "counter", "Prefix cache queries, in tokens.");
    sample("pie:prefix_cache_queries_total", std::to_string(g.prefix_cache_queries));
    family("pie:prefix_cache_hits_total", "counter", "Prefix cache hits, in tokens.");
    sample("pie:prefix_cache_hits_total", std::to_string(g.prefix_cache_hits));
    family("pie:prompt_tokens_total", "counter", "Number of prefill tokens processed.");
    sample("pie:prompt_tokens_total", std::to_string(prompt_tokens.load()));
    family("pie:generation_tokens_total", "counter", "Number of generation tokens processed.");
    sample("pie:generation_tokens_total", std::to_string(generation_tokens.load()));
    family("pie:request_success_total", "counter", "Count of finished requests by finish reason.");
    static constexpr const char* kReason[kNumFinish] = {"stop", "length", "abort"};
    for (int i = 0; i < kNumFinish; ++i)
      sample("pie:request_success_total", std::to_string(requests_finished[i].load()),
             std::string(",finished_reason=\"") + kReason[i] + "\"");
    family("pie:http_requests_total", "counter", "HTTP requests received.");
    sample("pie:http_requests_total", std::to_string(http_requests.load()));
    family("pie:http_errors_total", "counter", "HTTP responses with status >= 400.");
    sample("pie:http_errors_total", std::to_string(http_errors.load()));
    family("pie:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.");
    time_to_first_token.render(out, "pie:time_to_first_token_seconds", labels);
    family("pie:inter_token_latency_seconds", "histogram", "Histogram of inter-token latency in seconds.");
    inter_token_latency.render(out, "pie:inter_token_latency_seconds", labels);
    family("pie:e2e_request_latency_seconds", "histogram", "Histogram of end to end request latency in seconds.");
    e2e_request_latency.render(out, "pie:e2e_request_latency_seconds", labels);
    family("pie:request_queue_time_seconds", "histogram",
           "Histogram of time spent waiting before the first engine step that computed the request.");
    request_queue_time.render(out, "pie:request_queue_time_seconds", labels);
    return out;
  }

  /// Label values escape backslash, quote and newline (Prometheus text format).
  static std::string escape(const std::string& s) {
    std::string r;
    for (char c : s) {
      if (c == '\\' || c == '"')
        r += '\\', r += c;
      else if (c == '\n')
        r += "\\n";
      else
        r += c;
    }
    return r;
  }
};

}  // namespace pie::server

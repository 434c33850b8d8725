#pragma once
/// \file metrics.hpp
/// \brief Server metrics in the Prometheus text format (version 0.0.4) under vLLM's names
/// (`vllm:` prefix, labels `model_name` and `engine`, the histogram buckets of vLLM v1's
/// `vllm/v1/metrics/loggers.py`), so vLLM dashboards, alerts and routers read them unchanged.
/// A few `pie:` families add what vLLM does not export (HTTP counts, free/total KV blocks,
/// swapped sequences).
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <mutex>
#include <string>
#include <vector>

namespace pie::server {

/// \brief A Prometheus histogram with fixed upper bounds; thread-safe.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size(), 0) {}

  /// Replaces the bounds (and drops what was observed): for buckets known only once the model
  /// is loaded (vLLM's 1-2-5 buckets up to max_model_len).
  void set_bounds(std::vector<double> bounds) {
    std::lock_guard lk(mu_);
    bounds_ = std::move(bounds);
    counts_.assign(bounds_.size(), 0);
    sum_ = 0;
    count_ = 0;
  }

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

/// vLLM's build_1_2_5_buckets(max_value): 1, 2, 5, 10, 20, 50, ... up to max_value.
inline std::vector<double> buckets_1_2_5(double max_value) {
  std::vector<double> b;
  for (double e = 1;; e *= 10)
    for (double m : {1.0, 2.0, 5.0}) {
      if (m * e > max_value) return b;
      b.push_back(m * e);
    }
}

/// \brief The engine's state sampled at scrape time (gauges and the engine's own counters).
struct EngineGauges {
  int num_running = 0;
  int num_waiting = 0;
  int num_swapped = 0;
  double kv_usage = 0.0;              ///< fraction of KV blocks in use, [0, 1]
  uint64_t prefix_cache_queries = 0;  ///< tokens looked up in the prefix cache
  uint64_t prefix_cache_hits = 0;     ///< of those, tokens found
  uint64_t num_preemptions = 0;       ///< since the engine was built
  int num_kv_blocks = 0;              ///< device blocks of the KV cache
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
  std::atomic<int> block_size{0};  ///< tokens per KV block, for vllm:cache_config_info

  // vLLM v1's buckets (vllm/v1/metrics/loggers.py).
  static std::vector<double> request_latency_buckets() {
    return {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
            30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
  }
  static std::vector<double> token_latency_buckets() {
    return {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
  }
  Histogram time_to_first_token{{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,   0.25,  0.5,   0.75,
                                 1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0}};
  Histogram time_per_output_token{token_latency_buckets()};  ///< per engine step, as vLLM v1
  Histogram inter_token_latency{token_latency_buckets()};
  Histogram e2e_request_latency{request_latency_buckets()};
  Histogram request_queue_time{request_latency_buckets()};
  Histogram request_inference_time{request_latency_buckets()};
  Histogram request_prefill_time{request_latency_buckets()};
  Histogram request_decode_time{request_latency_buckets()};
  Histogram request_prompt_tokens{buckets_1_2_5(4096)};  ///< rebucketed by set_max_model_len
  Histogram request_generation_tokens{buckets_1_2_5(4096)};
  Histogram request_params_max_tokens{buckets_1_2_5(4096)};
  Histogram request_params_n{{1, 2, 5, 10, 20}};
  Histogram iteration_tokens{{1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384}};

  /// The token-count histograms bucket up to the context length, as vLLM's do.
  void set_max_model_len(int max_model_len) {
    for (Histogram* h : {&request_prompt_tokens, &request_generation_tokens, &request_params_max_tokens})
      h->set_bounds(buckets_1_2_5(max_model_len));
  }

  /// The whole exposition: HELP/TYPE once per family, every sample labelled with the model and
  /// the engine index (always 0: one engine per server), as vLLM labels them.
  std::string render(const std::string& model_name, const EngineGauges& g) const {
    const std::string labels = "model_name=\"" + escape(model_name) + "\",engine=\"0\"";
    std::string out;
    auto family = [&](const char* name, const char* type, const char* help) {
      out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
    };
    auto sample = [&](const char* name, const std::string& value, const std::string& extra = {}) {
      out += std::string(name) + "{" + labels + extra + "} " + value + "\n";
    };
    auto num = [](double v) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.9g", v);
      return std::string(buf);
    };
    auto gauge = [&](const char* name, const char* help, const std::string& v) {
      family(name, "gauge", help);
      sample(name, v);
    };
    auto counter = [&](const char* name, const char* help, uint64_t v) {
      family(name, "counter", help);
      sample(name, std::to_string(v));
    };
    auto histogram = [&](const char* name, const char* help, const Histogram& h) {
      family(name, "histogram", help);
      h.render(out, name, labels);
    };
    gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
          std::to_string(g.num_running));
    gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", std::to_string(g.num_waiting));
    gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", num(g.kv_usage));
    gauge("vllm:gpu_cache_usage_perc",
          "GPU KV-cache usage. 1 means 100 percent usage. DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
          num(g.kv_usage));
    counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.",
            g.prefix_cache_queries);
    counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.",
            g.prefix_cache_hits);
    counter("vllm:num_preemptions_total", "Cumulative number of preemption from the engine.", g.num_preemptions);
    counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.", prompt_tokens.load());
    counter("vllm:generation_tokens_total", "Number of generation tokens processed.", generation_tokens.load());
    family("vllm:request_success_total", "counter", "Count of successfully processed requests.");
    static constexpr const char* kReason[kNumFinish] = {"stop", "length", "abort"};
    for (int i = 0; i < kNumFinish; ++i)
      sample("vllm:request_success_total", std::to_string(requests_finished[i].load()),
             std::string(",finished_reason=\"") + kReason[i] + "\"");
    histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", request_prompt_tokens);
    histogram("vllm:request_generation_tokens", "Number of generation tokens processed.", request_generation_tokens);
    histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", iteration_tokens);
    histogram("vllm:request_params_n", "Histogram of the n request parameter.", request_params_n);
    histogram("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
              request_params_max_tokens);
    histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
              time_to_first_token);
    histogram("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
              time_per_output_token);
    histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
              inter_token_latency);
    histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
              e2e_request_latency);
    histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
              request_queue_time);
    histogram("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.",
              request_inference_time);
    histogram("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.",
              request_prefill_time);
    histogram("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.",
              request_decode_time);
    family("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig");
    sample("vllm:cache_config_info", "1",
           ",block_size=\"" + std::to_string(block_size.load()) + "\",num_gpu_blocks=\"" + std::to_string(g.num_kv_blocks) +
               "\"");
    // pie's additions: what vLLM does not export.
    const int used = static_cast<int>(g.kv_usage * g.num_kv_blocks + 0.5);
    gauge("pie:kv_cache_blocks_total", "KV-cache blocks of the device cache.", std::to_string(g.num_kv_blocks));
    gauge("pie:kv_cache_blocks_free", "KV-cache blocks not in use.", std::to_string(g.num_kv_blocks - used));
    gauge("pie:num_requests_swapped", "Sequences whose KV blocks are swapped out to the host.",
          std::to_string(g.num_swapped));
    counter("pie:http_requests_total", "HTTP requests received.", http_requests.load());
    counter("pie:http_errors_total", "HTTP responses with status >= 400.", http_errors.load());
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

#pragma once
// A GenerationService whose "model" output is scripted, for testing the HTTP/protocol layer
// deterministically (the embedded model's weights are random): each request is answered with
// `script(prompt ids)`, one text delta per piece, then EOS (token 2).
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pie/server/engine_service.hpp"

namespace pie::server::test {

class ScriptedService final : public GenerationService {
 public:
  using Script = std::function<std::vector<std::string>(const std::vector<int32_t>& prompt)>;
  explicit ScriptedService(Script script) : script_(std::move(script)) {}
  explicit ScriptedService(std::vector<std::string> pieces)
      : script_([pieces = std::move(pieces)](const std::vector<int32_t>&) { return pieces; }) {}

  std::shared_ptr<RequestStream> submit(SubmitRequest req) override {
    const std::vector<std::string> pieces = script_(req.prompt);
    auto s = std::make_shared<RequestStream>();
    for (size_t i = 0; i < pieces.size(); ++i) {
      StreamEvent ev;
      ev.prompt_tokens = static_cast<int32_t>(req.prompt.size());
      SeqDelta d;
      d.text = pieces[i];
      d.tokens = {1};
      if (i + 1 == pieces.size()) {
        d.finish = sched::FinishReason::Stop;
        d.stop_token = 2;
        ev.finished = true;
      }
      ev.seqs.push_back(std::move(d));
      s->push(std::move(ev));
    }
    return s;
  }
  void cancel(const std::shared_ptr<RequestStream>&) override {}
  ServiceState state() const override { return ServiceState::Ready; }
  std::string load_error() const override { return {}; }
  ModelInfo model_info() const override {
    ModelInfo m;
    m.max_model_len = 1 << 20;
    m.vocab_size = 1000;
    m.eos_ids = {2};
    return m;
  }
  EngineGauges gauges() const override { return {}; }

 private:
  Script script_;
};

}  // namespace pie::server::test

#pragma once
/// \file finish_reason.hpp
/// \brief Why a sequence stopped (OpenAI's finish_reason values, plus abort).
#include <string_view>

namespace pie::sched {

/// \brief Finish reason of a sequence; None while it runs.
enum class FinishReason { None, Stop, Length, Abort };

inline constexpr std::string_view finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Abort: return "abort";
    default: return "";
  }
}

}  // namespace pie::sched

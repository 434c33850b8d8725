#pragma once
/// \file variants.hpp
/// \brief Forwarding header: the attention variants moved to core/attention_variants.hpp.
#include "pie/core/attention_variants.hpp"  // moved to core/attention_variants.hpp

#pragma once
/// \file bpe.hpp
/// \brief The byte-level BPE model: a vocabulary of byte strings and ranked merges of id
/// pairs. A word is encoded by repeatedly applying the lowest-ranked merge present (leftmost
/// first on ties), which is exactly Hugging Face's priority-queue order.
#include <array>
#include <cstdint>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "pie/core/error.hpp"

namespace pie::tokenizer {

/// \brief Vocabulary + merges over raw bytes (the ByteLevel spelling is undone at load time).
class BpeModel {
 public:
  void reserve(std::size_t tokens, std::size_t merges) {
    id_bytes_.reserve(tokens);
    by_bytes_.reserve(tokens);
    merges_.reserve(merges);
  }

  /// Registers token `id` whose raw bytes are `bytes`.
  void add_token(std::string bytes, std::int32_t id) {
    PIE_CHECK(id >= 0, "tokenizer: negative token id ", id);
    if (static_cast<std::size_t>(id) >= id_bytes_.size()) id_bytes_.resize(id + 1);
    if (bytes.size() == 1) byte_id_[static_cast<unsigned char>(bytes[0])] = id;
    id_bytes_[id] = bytes;
    by_bytes_.emplace(std::move(bytes), id);
  }

  /// Appends the next merge (rank = call order): `left` + `right` -> the token of their bytes.
  void add_merge(std::int32_t left, std::int32_t right) {
    const std::string joined = id_bytes_.at(left) + id_bytes_.at(right);
    const auto it = by_bytes_.find(joined);
    PIE_CHECK(it != by_bytes_.end(), "tokenizer: merge result '", joined, "' is not in the vocabulary");
    merges_.push_back({key(left, right), static_cast<std::int32_t>(merges_.size()), it->second});
  }

  /// Builds the merge hash table; call once after all merges are added.
  void finalize(bool ignore_merges) {
    ignore_merges_ = ignore_merges;
    std::size_t cap = 16;
    while (cap < merges_.size() * 2) cap <<= 1;
    table_.assign(cap, Slot{});
    mask_ = cap - 1;
    for (const auto& m : merges_) {
      std::size_t h = hash(m.key) & mask_;
      while (table_[h].rank >= 0 && table_[h].key != m.key) h = (h + 1) & mask_;
      if (table_[h].rank < 0) table_[h] = m;  // duplicate merge lines keep the first rank
    }
    for (int b = 0; b < 256; ++b)
      PIE_CHECK(byte_id_[b] >= 0, "tokenizer: byte-level vocabulary lacks byte 0x", std::hex, b);
  }

  std::size_t size() const { return id_bytes_.size(); }
  std::size_t merge_count() const { return merges_.size(); }
  const std::string& bytes_of(std::int32_t id) const { return id_bytes_[id]; }
  std::optional<std::int32_t> find(std::string_view bytes) const {
    const auto it = by_bytes_.find(std::string(bytes));
    if (it == by_bytes_.end()) return std::nullopt;
    return it->second;
  }

  /// Appends the ids of one pre-token (raw bytes) to `out`.
  void encode_word(std::string_view w, std::vector<std::int32_t>& out) const {
    if (w.empty()) return;
    if (ignore_merges_) {
      if (auto id = find(w)) {
        out.push_back(*id);
        return;
      }
    }
    if (w.size() <= 48) {
      encode_short(w, out);
    } else {
      encode_long(w, out);
    }
  }

 private:
  struct Slot {
    std::uint64_t key = 0;
    std::int32_t rank = -1;
    std::int32_t merged = -1;
  };
  static std::uint64_t key(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }
  static std::size_t hash(std::uint64_t k) { return (k * 0x9E3779B97F4A7C15ull) >> 17; }
  const Slot* lookup(std::int32_t a, std::int32_t b) const {
    const std::uint64_t k = key(a, b);
    std::size_t h = hash(k) & mask_;
    while (table_[h].rank >= 0) {
      if (table_[h].key == k) return &table_[h];
      h = (h + 1) & mask_;
    }
    return nullptr;
  }

  // Short words: rescan all adjacent pairs each round; quadratic but cache-resident.
  void encode_short(std::string_view w, std::vector<std::int32_t>& out) const {
    std::int32_t sym[48];
    std::int32_t rank[48];  // rank[i]: merge rank of (sym[i], sym[i+1]), INT32_MAX if none
    std::int32_t merged[48];
    std::size_t n = w.size();
    for (std::size_t i = 0; i < n; ++i) sym[i] = byte_id_[static_cast<unsigned char>(w[i])];
    auto pair_at = [&](std::size_t i) {
      const Slot* s = lookup(sym[i], sym[i + 1]);
      rank[i] = s ? s->rank : INT32_MAX;
      merged[i] = s ? s->merged : -1;
    };
    for (std::size_t i = 0; i + 1 < n; ++i) pair_at(i);
    while (n > 1) {
      std::size_t best = 0;
      for (std::size_t i = 1; i + 1 < n; ++i)
        if (rank[i] < rank[best]) best = i;
      if (rank[best] == INT32_MAX) break;
      sym[best] = merged[best];
      for (std::size_t i = best + 1; i + 1 < n; ++i) {
        sym[i] = sym[i + 1];
        rank[i] = rank[i + 1];
        merged[i] = merged[i + 1];
      }
      --n;
      if (best + 1 < n) pair_at(best);
      if (best > 0) pair_at(best - 1);
    }
    out.insert(out.end(), sym, sym + n);
  }

  // Long words (whitespace runs, minified code): linked list + min-heap on (rank, position).
  void encode_long(std::string_view w, std::vector<std::int32_t>& out) const {
    const std::size_t n = w.size();
    std::vector<std::int32_t> sym(n), prev(n), next(n);
    for (std::size_t i = 0; i < n; ++i) {
      sym[i] = byte_id_[static_cast<unsigned char>(w[i])];
      prev[i] = static_cast<std::int32_t>(i) - 1;
      next[i] = i + 1 < n ? static_cast<std::int32_t>(i + 1) : -1;
    }
    struct Cand {
      std::int32_t rank, pos, left, right;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](std::int32_t i) {
      if (i < 0 || next[i] < 0) return;
      if (const Slot* s = lookup(sym[i], sym[next[i]])) heap.push({s->rank, i, sym[i], sym[next[i]]});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) push(static_cast<std::int32_t>(i));
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      const std::int32_t i = c.pos, j = next[i];
      // Stale entries: the pair at this position changed since it was queued.
      if (sym[i] < 0 || j < 0 || sym[i] != c.left || sym[j] != c.right) continue;
      sym[i] = lookup(c.left, c.right)->merged;
      sym[j] = -1;
      next[i] = next[j];
      if (next[j] >= 0) prev[next[j]] = i;
      push(prev[i]);
      push(i);
    }
    for (std::int32_t i = 0; i >= 0; i = next[i]) out.push_back(sym[i]);
  }

  std::vector<std::string> id_bytes_;
  std::unordered_map<std::string, std::int32_t> by_bytes_;
  std::array<std::int32_t, 256> byte_id_ = [] {
    std::array<std::int32_t, 256> a{};
    a.fill(-1);
    return a;
  }();
  std::vector<Slot> merges_;
  std::vector<Slot> table_;
  std::size_t mask_ = 0;
  bool ignore_merges_ = false;
};

}  // namespace pie::tokenizer

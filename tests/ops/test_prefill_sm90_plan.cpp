// The host-checkable arithmetic of the Hopper prefill kernel v3 (prefill_sm90_plan.hpp), on the
// CPU: the TMA map's limits, where a TMA box's elements land against the stage layout, the wgmma
// descriptors' canonical layouts read over that stage (checked first on v2's layout, which ran on
// the card), and the K/V rings' barriers in a randomised simulation of the producer warps, the
// asynchronous copies and the consumer warps with their ping-pong named barriers (no deadlock,
// no copy into a stage still read, each read sees its tile whole), also over the persistent
// grid's walks; the persistent order's coverage and balance. A wrong parity, an unreleased last V
// and a persistent walk without its barrier between items must be caught.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "pie/ops/cuda/prefill_sm90_plan.hpp"

namespace {
using namespace pie::ops::cuda::sm90::plan;

constexpr int kBN = 128;

struct Case {
  Box box;
  int hd, bs;
};
std::vector<Case> cases() {
  std::vector<Case> c;
  for (int bs : {8, 16, 32, 64, 128}) {
    c.push_back({Box::kHalves, 64, bs});
    c.push_back({Box::kHalves, 128, bs});
    c.push_back({Box::kPage, 128, bs});
  }
  return c;
}

TEST(PrefillSm90Plan, TensorMapWithinTmaLimits) {
  for (const Case& c : cases()) {
    const KvMap m = kv_map(c.box, c.hd, c.bs);
    SCOPED_TRACE(testing::Message() << "hd " << c.hd << " bs " << c.bs << " page box " << (c.box == Box::kPage));
    ASSERT_GE(m.rank, 1);
    ASSERT_LE(m.rank, 5);
    uint64_t elems = 1;
    for (int i = 0; i < m.rank; ++i) {
      EXPECT_GE(m.box[i], 1u);
      EXPECT_LE(m.box[i], 256u);
      EXPECT_LE(m.box[i], m.dims[i]);
      EXPECT_LE(m.dims[i], uint64_t(1) << 32);
      elems *= m.box[i];
    }
    for (int i = 0; i + 1 < m.rank; ++i) {
      EXPECT_EQ(m.strides[i] % 16, 0u) << "stride " << i;
      EXPECT_LT(m.strides[i], uint64_t(1) << 40);
    }
    EXPECT_EQ(m.box[0] * 2, 128u);  // the inner box spans the 128-byte swizzle exactly
    EXPECT_EQ(elems * 2 * boxes_per_page(c.box, c.hd), uint64_t(c.bs) * c.hd * 2) << "a page's boxes carry the page";
    EXPECT_EQ(box_bytes(c.box, c.hd, c.bs), elems * 2);
  }
}

// Walks a box in TMA order (dimension 0 fastest; shared memory filled densely in that order),
// maps each element's global offset back to (token of the page, column) of the page [bs][hd],
// and checks it lands at the stage layout's offset of (key, column) — every element once.
TEST(PrefillSm90Plan, BoxesLandOnTheStageLayout) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(testing::Message() << "hd " << c.hd << " bs " << c.bs << " page box " << (c.box == Box::kPage));
    const KvMap m = kv_map(c.box, c.hd, c.bs);
    const StageLayout l = stage_layout(c.box, kBN, c.hd);
    std::set<uint32_t> seen;
    for (int page = 0; page < kBN / c.bs; ++page) {
      for (int h = 0; h < boxes_per_page(c.box, c.hd); ++h) {
        const uint32_t dst = box_offset(c.box, kBN, c.hd, c.bs, page, h);
        EXPECT_EQ(dst % 1024, 0u) << "a box must start on a 1 KB swizzle atom";
        // The box's start coordinate: column h·64 (kHalves), 0 elsewhere; the row is the page.
        int idx[5] = {0, 0, 0, 0, 0};
        uint32_t n = 0;
        for (;;) {
          uint64_t g = uint64_t(idx[0] + (c.box == Box::kHalves ? h * 64 : 0)) * 2;
          for (int d = 1; d < m.rank; ++d) g += uint64_t(idx[d]) * m.strides[d - 1];
          ASSERT_LT(g, uint64_t(c.bs) * c.hd * 2) << "a box reads past its page";
          const int tok = int(g / (c.hd * 2)), col = int(g % (c.hd * 2)) / 2;
          const uint32_t got = dst + n * 2, want = l.offset(page * c.bs + tok, col);
          ASSERT_EQ(got, want) << "page " << page << " token " << tok << " column " << col;
          EXPECT_TRUE(seen.insert(got).second);
          ++n;
          int d = 0;
          while (d < m.rank && ++idx[d] == int(m.box[d])) idx[d++] = 0;
          if (d == m.rank) break;
        }
      }
    }
    EXPECT_EQ(seen.size(), size_t(kBN) * c.hd) << "the stage is covered";
  }
}

// The canonical 128-byte-swizzle layouts of wgmma (PTX ISA, "shared memory matrix layout"),
// before the swizzle: K-major, element (n, k) of a k16 slice at start + (n/8)·SBO + (n%8)·128 + 2k;
// MN-major, element (k, n) at start + (k/8)·SBO + (k%8)·128 + (n/64)·LBO + 2(n%64).
void check_descriptors(StageLayout l, int hd, uint32_t k_lbo_unused, uint32_t v_lbo, uint32_t sbo,
                       uint32_t (*k_start)(StageLayout, int), uint32_t (*v_start)(StageLayout, int)) {
  (void)k_lbo_unused;
  for (int kk = 0; kk < hd / 16; ++kk)  // S = Q·Kᵀ: B = K [BN keys][hd], k = column
    for (int n = 0; n < kBN; ++n)
      for (int k = 0; k < 16; ++k)
        ASSERT_EQ(k_start(l, kk) + (n / 8) * sbo + (n % 8) * 128 + 2 * k, l.offset(n, kk * 16 + k))
            << "K kk " << kk << " key " << n << " k " << k;
  for (int kk = 0; kk < kBN / 16; ++kk)  // O += P·V: B = V [BN keys][hd], k = key, n = column
    for (int k = 0; k < 16; ++k)
      for (int n = 0; n < hd; ++n)
        ASSERT_EQ(v_start(l, kk) + (k / 8) * sbo + (k % 8) * 128 + (n / 64) * v_lbo + 2 * (n % 64),
                  l.offset(kk * 16 + k, n))
            << "V kk " << kk << " key " << k << " column " << n;
}

TEST(PrefillSm90Plan, DescriptorsReadTheStageLayout) {
  // v2's stage, descriptors as v2 writes them (K: +(kk/4)·BN·128 + (kk%4)·32, SBO 1024; V:
  // +kk·16·128, LBO BN·128, SBO 1024) — these ran on the card, so they check the model.
  for (int hd : {64, 128}) {
    const StageLayout v2 = stage_layout(Box::kHalves, kBN, hd);
    check_descriptors(
        v2, hd, 16, kBN * 128, 1024, [](StageLayout, int kk) { return uint32_t((kk / 4) * kBN * 128 + (kk % 4) * 32); },
        [](StageLayout, int kk) { return uint32_t(kk * 16 * 128); });
    EXPECT_EQ(v2.group_stride, 1024u);
    EXPECT_EQ(v2.half_stride, uint32_t(kBN * 128));
  }
  // v3: the plan's descriptors on both layouts.
  for (const Case& c : cases()) {
    const StageLayout l = stage_layout(c.box, kBN, c.hd);
    check_descriptors(l, c.hd, 16, l.half_stride, l.group_stride, k_desc_offset, v_desc_offset);
  }
  // The descriptor fields hold offsets >> 4 in 14 bits.
  for (const Case& c : cases()) {
    const StageLayout l = stage_layout(c.box, kBN, c.hd);
    EXPECT_EQ(l.group_stride % 16, 0u);
    EXPECT_LT(l.half_stride >> 4, 1u << 14);
    EXPECT_LT(l.group_stride >> 4, 1u << 14);
  }
}

TEST(PrefillSm90Plan, LoadOrderAndPageSplit) {
  for (int n = 1; n < 12; ++n) {
    std::vector<int> k_pos(n, -1), v_pos(n, -1);
    for (int i = 0; i < 2 * n; ++i) {
      const Load ld = load_at(i, n);
      ASSERT_GE(ld.tile, 0);
      ASSERT_LT(ld.tile, n);
      auto& pos = ld.v ? v_pos : k_pos;
      EXPECT_EQ(pos[ld.tile], -1) << "loaded twice";
      pos[ld.tile] = i;
    }
    for (int t = 0; t < n; ++t) {
      EXPECT_GE(k_pos[t], 0);
      EXPECT_GE(v_pos[t], 0);
      if (t + 1 < n) EXPECT_LT(k_pos[t + 1], v_pos[t]) << "K(t+1) goes before V(t): S(t+1) is issued with P(t)·V(t)";
      if (t > 0) EXPECT_LT(v_pos[t - 1], v_pos[t]);
    }
  }
  for (int ppt : {1, 2, 4, 8, 16}) {
    int total = 0;
    for (int w = 0; w < 4; ++w) {
      const int m = pages_of_warp(w, 4, ppt);
      EXPECT_LE(m, 32) << "one lane per page";
      for (int j = 0; j < m; ++j) EXPECT_LT(w + 4 * j, ppt);
      EXPECT_GE(w + 4 * m, ppt) << "warp " << w << " leaves a page";
      total += m;
    }
    EXPECT_EQ(total, ppt);
  }
}

// ---- ring simulation ----------------------------------------------------------------------
/// An mbarrier: `pending` arrivals and `tx` bytes left in the current phase; `phase` completed phases.
struct Mbar {
  int count = 0, pending = 0;
  long tx = 0;
  int phase = 0;
  void init(int c) { count = pending = c; }
  void check() {
    if (pending == 0 && tx == 0) { ++phase; pending = count; }
  }
  void arrive_expect(long bytes) { tx += bytes; --pending; check(); }
  void complete(long bytes) { tx -= bytes; check(); }
  bool passed(uint32_t parity) const { return (phase & 1) != int(parity); }  // try_wait.parity
};

/// One CTA's side of the simulation: its barriers, what its stages hold, who reads them.
struct CtaState {
  std::vector<Mbar> kfull, vfull, kempty, vempty;
  struct Slot { int tile = -1; int pages = 0; };
  std::vector<Slot> kslot, vslot;
  std::vector<std::multiset<int>> kread, vread;
  struct NamedBar { int count = 0, gen = 0; };
  NamedBar nbar[8];
  CtaState(int s, int empty_count) : kfull(s), vfull(s), kempty(s), vempty(s), kslot(s), vslot(s), kread(s), vread(s) {
    for (int i = 0; i < s; ++i) {
      kfull[i].init(4); vfull[i].init(4); kempty[i].init(empty_count); vempty[i].init(empty_count);
    }
  }
  void nb_arrive(int id, int threads) {  // one warp's arrival on a barrier of `threads` threads
    if ((nbar[id].count += 32) == threads) nbar[id].count = 0, ++nbar[id].gen;
  }
};

/// The kernel's barrier protocol over one CTA (kTile: one item; kPersistent: a walk of items) or a
/// 2-CTA cluster (kCluster: each CTA its own tile's key tiles, both loading the longer range, every
/// copy landing in both CTAs, every release arriving on both CTAs' empty barriers).
template <class RingT>
struct Sim {
  int S, ppt;
  Grid grid;
  ConsumerBars nb;      // nb.nc consumer warpgroups
  int fault = 0;  // 1: warpgroup 0 leaves the last hand-over; 2: the items barrier counts 256 threads
  std::vector<std::vector<int>> own;  // per CTA: key tiles of each of its items
  std::vector<std::vector<int>> load;  // per CTA: key tiles its producer loads per item
  std::vector<CtaState> cta;
  struct Copy { int dst_cta; bool v; int stage, tile, pages; long bytes; };
  std::vector<Copy> inflight;
  std::string error;

  Sim(int s, Grid g, std::vector<std::vector<int>> items, int p, int nc = 2)
      : S(s), ppt(p), grid(g), nb{nc}, own(std::move(items)) {
    load = own;
    if (grid == Grid::kCluster) {  // the pair loads the longer range
      const int n = std::max(own[0][0], own[1][0]);
      load = {{n}, {n}};
    }
    for (size_t c = 0; c < own.size(); ++c) cta.emplace_back(s, (grid == Grid::kCluster ? 2 : 1) * 4 * nc);
  }
  int ncta() const { return int(own.size()); }

  // A producer warp: per item, per load, wait empty (if the ring has wrapped), arrive.expect_tx
  // (its pages and, in a cluster, its twin's in the peer), issue copies (to every CTA).
  struct Producer { int c, warp, item = 0, i = 0, base = 0; };
  int pages_of(int c, int warp) const {
    return grid == Grid::kCluster ? pages_of_warp(warp, 4, pages_of_warp(c, 2, ppt)) : pages_of_warp(warp, 4, ppt);
  }
  bool step(Producer& p) {
    const auto& items = load[p.c];
    while (p.item < int(items.size()) && p.i >= 2 * items[p.item]) p.base += items[p.item++], p.i = 0;
    if (p.item >= int(items.size())) return false;
    CtaState& me = cta[p.c];
    const int n = items[p.item];
    const Load ld = load_at(p.i, n);
    const int r = p.base + ld.tile, s = RingT::stage(r);
    if (RingT::waits_empty(r) && !(ld.v ? me.vempty : me.kempty)[s].passed(RingT::empty_parity(r))) return false;
    const int mine = pages_of(p.c, p.warp), twin = ncta() == 2 ? pages_of(1 - p.c, p.warp) : 0;
    (ld.v ? me.vfull : me.kfull)[s].arrive_expect(long(mine + twin) * 100);
    if (mine > 0)
      for (int d = 0; d < ncta(); ++d) {
        auto& rd = ld.v ? cta[d].vread : cta[d].kread;
        if (!rd[s].empty()) error = "copy issued into a stage a consumer still reads";
        inflight.push_back({d, ld.v, s, r, mine, long(mine) * 100});
      }
    ++p.i;
    return true;
  }
  void land(size_t k) {
    Copy c = inflight[k];
    inflight.erase(inflight.begin() + long(k));
    CtaState& d = cta[c.dst_cta];
    auto& slot = (c.v ? d.vslot : d.kslot)[c.stage];
    auto& rd = c.v ? d.vread : d.kread;
    if (!rd[c.stage].empty()) error = "copy landed in a stage a consumer still reads";
    if (slot.tile != c.tile) slot = {c.tile, 0};
    slot.pages += c.pages;
    (c.v ? d.vfull : d.kfull)[c.stage].complete(c.bytes);
  }

  // Consumer warp w of CTA c (warpgroup cw = w / 4) as the kernel's loop, with the ping-pong's
  // named barriers (ConsumerBars::turn: bar.sync / bar.arrive over 256 threads), the persistent
  // grid's consumer-wide barrier between items (128·nc threads), and the cluster's tiles past the
  // CTA's own. (An Op's `tile` is the barrier id for Arrive and Sync.)
  struct Op { enum K { WaitK, WaitV, ReadK, ReadV, RelK, RelV, Arrive, Sync } k; int tile; };
  struct Consumer { int c; std::vector<Op> ops; size_t pc = 0; int sync_gen = -1; };
  Consumer consumer(int c, int cw) {  // ring positions, as the kernel's consumer loop (it0 + t)
    Consumer con{c, {}};
    auto& o = con.ops;
    using O = Op;
    int b = 0;
    const int turn = nb.turn(cw), next = nb.next(cw);
    for (size_t it = 0; it < own[c].size(); ++it) {
      const int n = own[c][it];
      if (cw == nb.first_giver()) o.push_back({O::Arrive, nb.turn(0)});
      if (n > 0) {
        o.push_back({O::WaitK, b}); o.push_back({O::Sync, turn}); o.push_back({O::ReadK, b});
        o.push_back({O::Arrive, next}); o.push_back({O::RelK, b});
        for (int t = 1; t < n; ++t) {
          o.push_back({O::WaitK, b + t}); o.push_back({O::WaitV, b + t - 1}); o.push_back({O::Sync, turn});
          o.push_back({O::ReadK, b + t}); o.push_back({O::ReadV, b + t - 1});  // S(t), P·V(t−1) in flight
          o.push_back({O::Arrive, next});
          o.push_back({O::RelK, b + t});      // S(t) retired
          o.push_back({O::RelV, b + t - 1});  // P·V(t−1) retired
        }
      }
      if (cw == 0 && fault != 1) o.push_back({O::Sync, nb.turn(0)});  // the last warpgroup's last hand-over
      if (n > 0) { o.push_back({O::WaitV, b + n - 1}); o.push_back({O::ReadV, b + n - 1}); o.push_back({O::RelV, b + n - 1}); }
      for (int t = n; t < load[c][it]; ++t) {  // the cluster's tiles past this CTA's own
        o.push_back({O::WaitK, b + t}); o.push_back({O::RelK, b + t});
        o.push_back({O::WaitV, b + t}); o.push_back({O::RelV, b + t});
      }
      if (grid == Grid::kPersistent) o.push_back({O::Sync, nb.items()});
      b += load[c][it];
    }
    return con;
  }
  int threads(int bar) const { return bar == nb.items() && fault != 2 ? 128 * nb.nc : 256; }
  void release(std::vector<Mbar> CtaState::*bars, int s) {
    for (auto& d : cta) (d.*bars)[s].arrive_expect(0);  // this CTA's barrier and, in a cluster, the peer's
  }
  bool step(Consumer& c) {
    if (c.pc >= c.ops.size()) return false;
    CtaState& me = cta[c.c];
    const Op op = c.ops[c.pc];
    const int s = RingT::stage(op.tile);
    switch (op.k) {
      case Op::WaitK: if (!me.kfull[s].passed(RingT::full_parity(op.tile))) return false; break;
      case Op::WaitV: if (!me.vfull[s].passed(RingT::full_parity(op.tile))) return false; break;
      case Op::ReadK:
      case Op::ReadV: {
        const CtaState::Slot& sl = (op.k == Op::ReadK ? me.kslot : me.vslot)[s];
        if (sl.tile != op.tile || sl.pages != ppt) error = "a consumer read a stage that does not hold its whole tile";
        (op.k == Op::ReadK ? me.kread : me.vread)[s].insert(op.tile);
        break;
      }
      case Op::RelK: {
        auto f = me.kread[s].find(op.tile);
        if (f != me.kread[s].end()) me.kread[s].erase(f);
        release(&CtaState::kempty, s);
        break;
      }
      case Op::RelV: {
        auto f = me.vread[s].find(op.tile);
        if (f != me.vread[s].end()) me.vread[s].erase(f);
        release(&CtaState::vempty, s);
        break;
      }
      case Op::Arrive: me.nb_arrive(op.tile, threads(op.tile)); break;
      case Op::Sync:  // bar.sync: arrive once, then wait for the barrier's generation to complete
        if (c.sync_gen < 0) {
          c.sync_gen = me.nbar[op.tile].gen;
          me.nb_arrive(op.tile, threads(op.tile));
          if (me.nbar[op.tile].gen == c.sync_gen) return true;  // arrived; now it waits
        } else if (me.nbar[op.tile].gen == c.sync_gen) {
          return false;
        }
        c.sync_gen = -1;
        break;
    }
    ++c.pc;
    return true;
  }

  /// Runs to the end in a random interleaving; "" when every agent finished cleanly.
  std::string run(uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<Producer> prod;
    std::vector<Consumer> cons;
    for (int c = 0; c < ncta(); ++c) {
      for (int w = 0; w < 4; ++w) prod.push_back({c, w});
      for (int w = 0; w < 4 * nb.nc; ++w) cons.push_back(consumer(c, w / 4));
    }
    const int np = int(prod.size()), nc = int(cons.size());
    for (;;) {
      if (!error.empty()) return error;
      std::vector<int> movable;
      for (int i = 0; i < np + nc + int(inflight.size()); ++i) movable.push_back(i);
      std::shuffle(movable.begin(), movable.end(), rng);
      bool moved = false;
      for (int a : movable) {
        if (a < np) moved = step(prod[a]);
        else if (a < np + nc) moved = step(cons[a - np]);
        else { land(size_t(a - np - nc)); moved = true; }
        if (moved) break;
      }
      if (!moved) {
        for (auto& p : prod) if (step(p) || p.item < int(load[p.c].size())) return "deadlock: a producer waits forever";
        for (auto& c : cons) if (c.pc < c.ops.size()) return "deadlock: a consumer waits forever";
        for (auto& d : cta)
          for (int id = nb.turn(0); id <= nb.items(); ++id)
            if (d.nbar[id].count != 0) return "named barrier " + std::to_string(id) + " left with arrivals";
        return "";
      }
    }
  }
};

template <int S> struct BadRing : Ring<S> {  // the empty wait one phase late: the test must catch it
  static constexpr uint32_t empty_parity(int t) { return uint32_t(t / S) & 1u; }
};

template <int S, template <int> class R>
std::string simulate(std::vector<int> items, int ppt, uint32_t seed, bool persist = false, int nc = 2,
                     int fault = 0) {
  Sim<R<S>> sim(S, persist ? Grid::kPersistent : Grid::kTile, {std::move(items)}, ppt, nc);
  sim.fault = fault;
  return sim.run(seed);
}
template <int S>
std::string simulate_pair(int n0, int n1, int ppt, uint32_t seed) {
  Sim<Ring<S>> sim(S, Grid::kCluster, {{n0}, {n1}}, ppt);
  return sim.run(seed);
}

TEST(PrefillSm90Plan, RingsNeitherHangNorOverwrite) {
  for (int n = 1; n <= 9; ++n)
    for (int ppt : {1, 2, 8, 16})
      for (uint32_t seed = 0; seed < 12; ++seed) {
        SCOPED_TRACE(testing::Message() << "tiles " << n << " pages/tile " << ppt << " seed " << seed);
        EXPECT_EQ((simulate<2, Ring>({n}, ppt, seed)), "");
        EXPECT_EQ((simulate<3, Ring>({n}, ppt, seed)), "");
        EXPECT_EQ((simulate<6, Ring>({n}, ppt, seed)), "");
      }
}

// The persistent grid: one CTA walks several items; its rings run on across them.
TEST(PrefillSm90Plan, RingsRunOnAcrossPersistentItems) {
  const std::vector<std::vector<int>> walks = {{1, 1, 1, 1, 1}, {5, 4, 3, 2, 1}, {2, 7, 1, 3}, {3, 3, 3}, {64, 1, 16}};
  for (const auto& w : walks)
    for (int ppt : {1, 8, 16})
      for (uint32_t seed = 0; seed < 8; ++seed) {
        SCOPED_TRACE(testing::Message() << "walk of " << w.size() << " items, first " << w[0] << " pages/tile " << ppt);
        EXPECT_EQ((simulate<3, Ring>(w, ppt, seed, true)), "");
        EXPECT_EQ((simulate<6, Ring>(w, ppt, seed, true)), "");
      }
  // Without barrier 5 between items, a warpgroup's first ping-pong arrival of the next item can
  // meet barrier 3 before the other has taken the last one of this item.
  int hung = 0;
  std::string why;
  for (uint32_t seed = 0; seed < 200; ++seed) {
    const std::string e = simulate<3, Ring>({1, 1, 1, 1}, 8, seed, false);
    hung += !e.empty();
    if (!e.empty()) why = e;
  }
  std::printf("[persistent walks without barrier 5] %d of 200 interleavings fail (%s)\n", hung, why.c_str());
  EXPECT_GT(hung, 0) << "the simulation should catch the ping-pong barriers going out of step";
}

// The cluster grid: two CTAs of neighbouring row tiles (one of them maybe past the chunk, 0 key
// tiles), each loading half of every tile's pages into both.
TEST(PrefillSm90Plan, ClusterPairsNeitherHangNorOverwrite) {
  for (auto [n0, n1] : std::vector<std::pair<int, int>>{{1, 1}, {2, 1}, {1, 2}, {5, 4}, {9, 9}, {4, 0}, {0, 3}, {0, 0}})
    for (int ppt : {1, 2, 8, 16})
      for (uint32_t seed = 0; seed < 10; ++seed) {
        SCOPED_TRACE(testing::Message() << "tiles " << n0 << "/" << n1 << " pages/tile " << ppt << " seed " << seed);
        EXPECT_EQ(simulate_pair<3>(n0, n1, ppt, seed), "");
        EXPECT_EQ(simulate_pair<6>(n0, n1, ppt, seed), "");
      }
}

// Three consumer warpgroups (v3's "3w" shape: 192-row tiles at head dim 64): 12 consumer warps on
// the empty barriers, the ping-pong a round robin over barriers 4, 5, 6 (ConsumerBars).
TEST(PrefillSm90Plan, ThreeConsumerWarpgroupsNeitherHangNorOverwrite) {
  EXPECT_EQ((ConsumerBars{2}.turn(0)), 3);  // v2's numbering kept at 2 warpgroups
  EXPECT_EQ((ConsumerBars{2}.items()), 5);
  EXPECT_LE((ConsumerBars{3}.items()), 15);  // 16 named barriers per CTA
  for (int n = 0; n <= 9; ++n)
    for (int ppt : {1, 2, 8, 16})
      for (uint32_t seed = 0; seed < 12; ++seed) {
        SCOPED_TRACE(testing::Message() << "tiles " << n << " pages/tile " << ppt << " seed " << seed);
        EXPECT_EQ((simulate<6, Ring>({n}, ppt, seed, false, 3)), "");
        EXPECT_EQ((simulate<3, Ring>({n}, ppt, seed, false, 3)), "");
      }
  // The protocol also holds over a persistent walk (not compiled: 3 warpgroups take kTile only).
  for (uint32_t seed = 0; seed < 8; ++seed) EXPECT_EQ((simulate<6, Ring>({5, 4, 3, 2, 1}, 8, seed, true, 3)), "");
  // The faults the simulation must see: warpgroup 0 not taking the last hand-over (a barrier left
  // with arrivals), and the consumer-wide barrier between items counting 2 warpgroups' threads.
  int caught[2] = {0, 0};
  for (uint32_t seed = 0; seed < 20; ++seed) {
    caught[0] += !(simulate<6, Ring>({4}, 8, seed, false, 3, 1)).empty();
    caught[1] += !(simulate<6, Ring>({3, 2, 1}, 8, seed, true, 3, 2)).empty();
  }
  EXPECT_EQ(caught[0], 20);
  EXPECT_EQ(caught[1], 20);
}

TEST(PrefillSm90Plan, SimulationCatchesAWrongParity) {
  int caught = 0;
  for (uint32_t seed = 0; seed < 20; ++seed) caught += !(simulate<3, BadRing>({8}, 8, seed)).empty();
  EXPECT_EQ(caught, 20);
}

// The exp2 the kernel moves onto the FMA pipe (v3's "3e" shape): within 1e-4 of 2^x over the
// range a softmax feeds it (x ≤ 0), exact at integers, 2^−126 (not 0, not NaN, not a denormal
// missing its leading 1, as a clamp at −127 gave) far below and at −∞.
TEST(PrefillSm90Plan, Ex2PolyMatchesExp2) {
  double worst = 0;
  for (int i = 0; i <= 1260000; ++i) {
    const float x = -float(i) * 1e-4f;
    const double want = std::exp2(double(x)), got = ex2_poly(x);
    worst = std::max(worst, std::abs(got / want - 1));
  }
  std::printf("[ex2_poly] worst relative error over [-126, 0]: %.2e\n", worst);
  EXPECT_LT(worst, 1e-4);
  for (int j = 0; j >= -126; --j) EXPECT_EQ(ex2_poly(float(j)), std::ldexp(1.f, j));
  for (float x : {-126.5f, -127.f, -127.5f, -1000.f, -INFINITY}) EXPECT_EQ(ex2_poly(x), std::ldexp(1.f, -126)) << x;
  EXPECT_EQ(ex2_poly(-0.f), 1.f);
  EXPECT_NEAR(ex2_poly(1e-7f), 1.f, 1e-6);  // a rounding above the running max: floor 0
}

// The persistent grid's order: every item once; with items sorted heaviest first, the snake
// keeps the most loaded CTA near the mean on the benchmark's causal shapes (32 q / 8 KV heads,
// 128-row tiles of 32 tokens, a tile's cost its 128-key tiles under the mask), where plain
// round-robin would hand CTA 0 the heaviest item of every round.
TEST(PrefillSm90Plan, PersistentSnakeCoversAndBalances) {
  for (int grid : {1, 7, 132})
    for (int items : {1, 5, 131, 132, 133, 512, 2048}) {
      std::vector<int> seen(items, 0);
      for (int c = 0; c < grid; ++c)
        for (int k = 0;; ++k) {
          const int w = persistent_item(c, k, grid);
          if (w >= items) break;
          ++seen[w];
        }
      for (int w = 0; w < items; ++w) ASSERT_EQ(seen[w], 1) << "item " << w << " of " << items << ", grid " << grid;
    }
  for (int tokens : {2048, 8192}) {
    const int heads = 8, m_tiles = tokens * 4 / 128, grid = 132;
    const int items = m_tiles * heads;
    std::vector<int> seen(size_t(m_tiles) * heads, 0);
    auto cost = [](int tile) { return (tile * 32 + 32 + 127) / 128; };  // key tiles of row tile `tile`
    std::vector<double> snake(grid, 0), plain(grid, 0);
    double total = 0;
    for (int c = 0; c < grid; ++c)
      for (int k = 0;; ++k) {
        const int w = persistent_item(c, k, grid);
        if (w >= items) break;
        const Work wk = work_at(w, m_tiles, heads, 1);
        ASSERT_GE(wk.tile, 0);
        ++seen[size_t(wk.tile) * heads + wk.kvh];
        snake[c] += cost(wk.tile);
        total += cost(wk.tile);
      }
    for (int w = 0; w < items; ++w) plain[w % grid] += cost(work_at(w, m_tiles, heads, 1).tile);
    for (int x : seen) ASSERT_EQ(x, 1);
    const double mean = total / grid, mx = *std::max_element(snake.begin(), snake.end()),
                 mxp = *std::max_element(plain.begin(), plain.end());
    std::printf("[persistent %d tokens] most loaded CTA / mean: snake %.3f, round-robin %.3f\n", tokens, mx / mean,
                mxp / mean);
    EXPECT_LT(mx / mean, tokens == 8192 ? 1.02 : 1.10);
    EXPECT_LT(mx, mxp);
  }
}

}  // namespace

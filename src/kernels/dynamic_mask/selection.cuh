#pragma once
// The dynamic-mask builder's selection, launched by dynamic_mask_gpu.cu after the score passes: per-row radix
// selection of the kept key groups (top_k, top_p, threshold rules, capacity limit, compaction) and, for
// target_sparsity, a per-head weighted radix selection over the masses that sets each row's cut.
#include <algorithm>
#include <cstdint>

#include "kernels/dynamic_mask/scoring.cuh"  // mass_from_log
#include "kernels/dynamic_mask_layout.hpp"

namespace tileattn {
namespace kernels {
// Included by dynamic_mask_gpu.cu alone, so the kernels keep internal linkage (and their names) as one unit.
namespace {

using u64 = unsigned long long;

constexpr int kSelThreads = 256, kSelWarps = kSelThreads / 32;
constexpr int kTargetHistRows = 8;  // target_hist_kernel: query blocks (rows of one head) per CTA
constexpr uint32_t kForcedBit = 1u << 30;  // priority key: always-kept groups above every other group
constexpr uint32_t kAllTies = 0xffffffffu;
constexpr uint32_t kIneligible = 0xffffffffu;  // a cached key: the group is not eligible (keys never have bit 31)
// select_rows_kernel keeps a row's keys in shared memory (one read of the masses instead of one per radix pass and
// the compaction) when they take at most this much: at 720p N >= 8, with >= 2 CTAs per SM.
constexpr int64_t kMaxCachedKeyBytes = 64 * 1024;
constexpr int kBins = int(kDynBins);
__device__ constexpr int kShift[3] = {20, 10, 0};  // radix levels: key bits [30:20], [19:10], [9:0]
__device__ constexpr int kBits[3] = {11, 10, 10};

// A row's kept groups: every eligible group with key > key, plus the first tie_keep (by index) with key == key.
struct Cut {
  uint32_t key, tie_keep;
};
__device__ constexpr Cut kKeepNothing{0xffffffffu, 0};     // keys never have bit 31
__device__ constexpr Cut kKeepAll{0, kAllTies};
__device__ constexpr Cut kKeepForced{kForcedBit - 1, 0};  // exactly the keys >= 2^30

struct SelectParams {
  const float* mass;  // [pass rows, ng]; with lse: the one-pass estimate's L (mass = mass_from_log(L, lse[row]))
  const float* lse;   // [pass rows] (from the pass's first row), or null: mass holds the masses
  int tokens, nq, ng, query_block, key_group;
  int h0;  // first query head of the pass
  int rule;
  double p;
  long long k;
  uint32_t threshold_key;
  double target_sparsity;
  int keep_diagonal;
  int text_first_group;  // ng: no group is kept for text
  int cache_keys;        // select_rows_kernel: the row's keys in dynamic shared memory after the window bitmap
  // target_sparsity: its first pass (target_hist_kernel, level 0) writes every row's priority keys over the row's
  // masses, and the later passes read them (keys_in_place): a load and a compare per group instead of the mass,
  // density and eligibility arithmetic of RowView::key. (That pass reads each mass once, through __ldg, before the
  // same thread overwrites it; no thread reads a value another one writes.)
  int keys_in_place;
  const int32_t* win_table;
  const int32_t* win_counts;  // null: no window
  long long win_capacity;
  int32_t* table;
  int32_t* counts;
  long long capacity;
  DynHeadState* head_state;  // [heads of the pass]
  DynHeadHist* head_hist;
  DynRowTies* row_ties;  // [pass rows]
};

// 2^-40 fixed point: top_p's sums are exact integer sums, so the parallel scans below are consistent and the
// result does not depend on the order of the atomics.
__device__ __forceinline__ u64 to_fixed(float m) { return __double2ull_rn(double(m) * 1099511627776.0); }

struct RowView {
  const float* mass;
  const uint32_t* bitmap;  // eligible groups (window), or null: all
  const uint32_t* keys;    // the row's keys (shared cache, or keys_in_place: global; kIneligible: not eligible), or
                           // null: from mass
  bool from_log;           // mass holds L (see SelectParams), lse the row's LSE
  float lse;
  int ng, key_group, tokens, diag_first, diag_last, text_first;
  int full_groups;  // groups [0, full_groups) have key_group positions; only the last one may have fewer
  bool density;
  float inverse_group;  // 1 / key_group when that is a power of two (then m * it == m / key_group exactly), else 0

  __device__ int group_size(int g) const { return g < full_groups ? key_group : tokens - g * key_group; }
  // The priority key of an eligible group: float bits of the mass (target_sparsity: of mass / group size), bit 30
  // set for always-kept groups (those rank by mass). Masses are sanitised to [0, 1.75] (NaN -> 0).
  // From the cache, m is the mass only where the key holds it (not density, or an always-kept group); the callers
  // that read m (top_p's sums) run without density.
  __device__ bool key(int g, uint32_t& k, float& m) const {
    if (keys != nullptr) {
      k = keys[g];
      m = __uint_as_float(k & ~kForcedBit);
      return k != kIneligible;
    }
    if (bitmap != nullptr && !((bitmap[g >> 5] >> (g & 31)) & 1u)) return false;
    const float raw = from_log ? mass_from_log(__ldg(mass + g), lse) : __ldg(mass + g);
    m = raw >= 0.0f ? fminf(raw, 1.75f) : 0.0f;
    if ((g >= diag_first && g <= diag_last) || g >= text_first)
      k = __float_as_uint(m) | kForcedBit;
    else
      k = __float_as_uint(!density ? m
                          : inverse_group != 0.0f && g < full_groups
                              ? m * inverse_group  // a full group, power-of-two size: exact, no division
                              : __fdiv_rn(m, float(group_size(g))));
    return true;
  }
};

// Calls f(g, key, m) for each eligible group g of the thread's (g = threadIdx.x + i * kSelThreads), the keys of
// keys loaded before f runs on any of them: the loads are in flight together, not one per round of atomics.
// store: also writes every group's key there (kIneligible for the others).
template <class F>
__device__ __forceinline__ void for_each_key(const RowView& v, F&& f, uint32_t* store = nullptr) {
  constexpr int kBatch = 8;
  for (int g0 = threadIdx.x; g0 < v.ng; g0 += kSelThreads * kBatch) {
    uint32_t k[kBatch];
    float m[kBatch];
    bool ok[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int g = g0 + i * kSelThreads;
      ok[i] = g < v.ng && v.key(g, k[i], m[i]);
    }
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {  // the stores after all the batch's loads (store may alias the masses)
      const int g = g0 + i * kSelThreads;
      if (store != nullptr && g < v.ng) store[g] = ok[i] ? k[i] : kIneligible;
      if (ok[i]) f(g, k[i], m[i]);
    }
  }
}

template <class V>
__device__ V block_exclusive_scan(V v, V& total, V* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  V inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const V y = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += y;
  }
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  V before = 0, all = 0;
#pragma unroll
  for (int w = 0; w < kSelWarps; ++w) {
    const V s = scratch[w];
    if (w < warp) before += s;
    all += s;
  }
  __syncthreads();
  total = all;
  return before + inc - v;
}

template <class V>
__device__ V block_sum(V v, V* scratch) {
  V total;
  block_exclusive_scan(v, total, scratch);
  return total;
}

// cnt[bin] += 1 for every calling lane, one shared atomic per distinct bin of the warp: a row's masses crowd into few
// level-0 bins (exponent and 3 mantissa bits), where per-lane atomics serialise.
__device__ __forceinline__ void add_count(uint32_t* cnt, int bin) {
  const unsigned peers = __match_any_sync(__activemask(), bin);
  if ((threadIdx.x & 31) == unsigned(__ffs(peers) - 1)) atomicAdd(&cnt[bin], uint32_t(__popc(peers)));
}

// Below level 0 the keys that share a prefix spread over the bins, and __match_any_sync costs more than the few
// collisions it would merge: a plain atomic per key.
__device__ __forceinline__ void add_count_at(uint32_t* cnt, int bin, int level) {
  if (level == 0)
    add_count(cnt, bin);
  else
    atomicAdd(&cnt[bin], 1u);
}

struct Crossing {
  int bin, found;
  u64 above_val, above_cnt;  // over the bins above `bin`
};

struct SelShared {
  uint32_t cnt[kBins];
  u64 val[kBins];
  u64 scratch[kSelWarps];
  Crossing cross;
};

// The first bin, in descending order, at which base + the values of the bins down to it reach `need`. Values are
// integers, so the cumulative sums are exact and exactly one thread finds the bin. Result in s.cross.
template <class ValFn>
__device__ void find_crossing(SelShared& s, int nb, ValFn val, u64 base, double need) {
  const int per = nb / kSelThreads, hi = nb - 1 - int(threadIdx.x) * per;
  u64 lv = 0, lc = 0;
  for (int i = 0; i < per; ++i) lv += val(hi - i), lc += s.cnt[hi - i];
  u64 tv, tc;
  const u64 ev = block_exclusive_scan<u64>(lv, tv, s.scratch);
  const u64 ec = block_exclusive_scan<u64>(lc, tc, s.scratch);
  if (threadIdx.x == 0) s.cross.found = 0;
  __syncthreads();
  if (double(base + ev) < need && double(base + ev + lv) >= need) {
    u64 v = ev, c = ec;
    for (int i = 0; i < per; ++i) {
      const int b = hi - i;
      if (double(base + v + val(b)) >= need) {
        s.cross = Crossing{b, 1, v, c};
        break;
      }
      v += val(b), c += s.cnt[b];
    }
  }
  __syncthreads();
}

// Histogram of radix level `level` over the eligible groups whose key starts with `prefix` (the bits above the
// level's digit); with_val adds the masses (fixed point) too.
template <bool kVal>
__device__ void hist_pass(const RowView& v, SelShared& s, int level, uint32_t prefix) {
  const int nb = level == 0 ? kBins : 1024, shift = kShift[level], up = shift + kBits[level];
  __syncthreads();  // earlier readers of the histogram are done
  for (int i = threadIdx.x; i < nb; i += kSelThreads) {
    s.cnt[i] = 0;
    if (kVal) s.val[i] = 0;
  }
  __syncthreads();
  for_each_key(v, [&](int, uint32_t key, float m) {
    if ((key >> up) != prefix) return;  // level 0: up = 31, prefix 0
    const int bin = int(key >> shift) & (nb - 1);
    add_count_at(s.cnt, bin, level);
    if (kVal) atomicAdd(&s.val[bin], to_fixed(m));
  });
  __syncthreads();
}

struct RowStats {
  u64 eligible, forced, mass, by_cut;  // by_cut: how many groups `cut` keeps (when given)
};

// The first pass over a row: level 0's histogram (counts; kMass: masses too; not without kHist, for rules whose
// cut is known and which need it only past the capacity) and the row's totals (kMass: the mass).
template <bool kMass, bool kHist = true>
__device__ RowStats row_pass0(const RowView& v, SelShared& s, const Cut* cut) {
  static_assert(kHist || !kMass, "the masses go into the histogram");
  if (kHist) {
    __syncthreads();
    for (int i = threadIdx.x; i < kBins; i += kSelThreads) {
      s.cnt[i] = 0;
      if (kMass) s.val[i] = 0;
    }
    __syncthreads();
  }
  u64 counts = 0, mass = 0, by_cut = 0;  // counts: eligible | forced << 32; by_cut: above | ties << 32
  for_each_key(v, [&](int, uint32_t key, float m) {
    counts += 1ull + (u64(key >= kForcedBit) << 32);
    if (cut != nullptr) by_cut += u64(key > cut->key) + (u64(key == cut->key) << 32);
    if (kHist) add_count(s.cnt, int(key >> kShift[0]));
    if (kMass) {
      const u64 fx = to_fixed(m);
      mass += fx;
      atomicAdd(&s.val[key >> kShift[0]], fx);
    }
  });
  RowStats r;
  const u64 c = block_sum<u64>(counts, s.scratch);
  r.eligible = c & 0xffffffffu, r.forced = c >> 32;
  r.mass = kMass ? block_sum<u64>(mass, s.scratch) : 0;
  r.by_cut = 0;
  if (cut != nullptr) {
    const u64 t = block_sum<u64>(by_cut, s.scratch);
    r.by_cut = (t & 0xffffffffu) + min(t >> 32, u64(cut->tie_keep));
  }
  return r;
}

// The cut keeping the n highest-priority eligible groups, ties to the lower index (0 < n < eligible).
__device__ Cut count_select(const RowView& v, SelShared& s, u64 n, bool level0_ready) {
  uint32_t prefix = 0;
  u64 remaining = n;
  for (int level = 0; level < 3; ++level) {
    if (level > 0 || !level0_ready) hist_pass<false>(v, s, level, prefix);
    find_crossing(s, level == 0 ? kBins : 1024, [&](int b) { return u64(s.cnt[b]); }, 0, double(remaining));
    const Crossing c = s.cross;  // found: the histogram holds >= remaining groups
    remaining -= c.above_cnt;
    prefix = (prefix << kBits[level]) | uint32_t(c.bin);
    if (remaining == s.cnt[c.bin]) return Cut{prefix << kShift[level], kAllTies};  // the whole bin
  }
  return Cut{prefix, uint32_t(remaining)};
}

// top_p: the cut keeping the shortest prefix of the priority order whose mass reaches `target` (fixed point);
// n = its length. Level 0's histogram (with masses) must be current.
__device__ Cut mass_select(const RowView& v, SelShared& s, double target, u64 eligible, u64& n) {
  if (!(target > 0.0)) {
    n = 0;
    return kKeepNothing;
  }
  uint32_t prefix = 0;
  u64 base = 0, above = 0;
  for (int level = 0; level < 3; ++level) {
    if (level > 0) hist_pass<true>(v, s, level, prefix);
    find_crossing(s, level == 0 ? kBins : 1024, [&](int b) { return s.val[b]; }, base, target);
    const Crossing c = s.cross;
    if (!c.found) {  // only at level 0 (a bin's sub-bins add up to it exactly): the row never reaches the target
      n = eligible;
      return kKeepAll;
    }
    base += c.above_val;
    above += c.above_cnt;
    prefix = (prefix << kBits[level]) | uint32_t(c.bin);
    const u64 cnt = s.cnt[c.bin];
    if (cnt == 1) {
      n = above + 1;
      return Cut{prefix << kShift[level], kAllTies};
    }
    if (level == 2) {  // cnt equal keys: keep the fewest (lowest indices) that reach the target
      const u64 each = s.val[c.bin] / cnt;
      u64 r = cnt;
      if (each > 0) {
        r = u64(fmin(fmax(ceil((target - double(base)) / double(each)), 1.0), double(cnt)));
        while (r > 1 && double(base + (r - 1) * each) >= target) --r;
        while (r < cnt && double(base + r * each) < target) ++r;
      }
      n = above + r;
      return Cut{prefix, uint32_t(r)};
    }
  }
  n = eligible;  // not reached
  return kKeepAll;
}

// Writes the row's kept groups ascending, -1 up to the capacity, and the count.
__device__ void compact_row(const RowView& v, SelShared& s, Cut cut, int32_t* out, long long capacity,
                            int32_t* count) {
  constexpr int kItems = 4;
  u64 above_base = 0, tie_base = 0;
  for (int base = 0; base < v.ng; base += kSelThreads * kItems) {
    bool above[kItems], tie[kItems];
    uint32_t na = 0, nt = 0;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int g = base + int(threadIdx.x) * kItems + i;
      uint32_t key = 0;
      float m;
      const bool ok = g < v.ng && v.key(g, key, m);
      above[i] = ok && key > cut.key;
      tie[i] = ok && key == cut.key;
      na += above[i], nt += tie[i];
    }
    u64 total;
    const u64 ex = block_exclusive_scan<u64>(u64(na) | (u64(nt) << 32), total, s.scratch);
    u64 a = above_base + (ex & 0xffffffffu), t = tie_base + (ex >> 32);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int g = base + int(threadIdx.x) * kItems + i;
      if (above[i]) {
        const u64 pos = a + min(t, u64(cut.tie_keep));
        if (pos < u64(capacity)) out[pos] = g;
        ++a;
      } else if (tie[i]) {
        if (t < cut.tie_keep && a + t < u64(capacity)) out[a + t] = g;
        ++t;
      }
    }
    above_base += total & 0xffffffffu;
    tie_base += total >> 32;
  }
  const u64 n = min(above_base + min(tie_base, u64(cut.tie_keep)), u64(capacity));
  for (long long i = static_cast<long long>(n) + threadIdx.x; i < capacity; i += kSelThreads) out[i] = -1;
  if (threadIdx.x == 0) *count = int32_t(n);
}

__device__ __forceinline__ int bitmap_words(const SelectParams& p) {
  return p.win_counts != nullptr ? (p.ng + 31) / 32 : 0;
}

// Pass row -> its view (builds the window bitmap in shared memory; cache: and the row's keys after it). Every
// thread of the CTA must call it.
__device__ RowView setup_row(const SelectParams& p, int64_t row, uint32_t* bitmap, bool density, bool cache = false) {
  const int qb = int(row % p.nq), head = p.h0 + int(row / p.nq);
  RowView v;
  v.mass = p.mass + row * p.ng;
  v.ng = p.ng, v.key_group = p.key_group, v.tokens = p.tokens, v.density = density;
  v.inverse_group = (p.key_group & (p.key_group - 1)) == 0 ? 1.0f / float(p.key_group) : 0.0f;
  v.bitmap = nullptr;
  v.keys = nullptr;
  v.from_log = p.lse != nullptr;
  v.lse = v.from_log ? p.lse[row] : 0.0f;
  if (p.win_counts != nullptr && !p.keys_in_place) {
    for (int i = threadIdx.x; i < (p.ng + 31) / 32; i += kSelThreads) bitmap[i] = 0;
    __syncthreads();
    const int64_t wrow = int64_t(head) * p.nq + qb;
    const long long listed = min(max(static_cast<long long>(p.win_counts[wrow]), 0ll), p.win_capacity);
    const int32_t* list = p.win_table + wrow * p.win_capacity;
    for (long long i = threadIdx.x; i < listed; i += kSelThreads) {
      const int32_t g = list[i];
      if (g >= 0 && g < p.ng) atomicOr(&bitmap[g >> 5], 1u << (g & 31));
    }
    __syncthreads();
    v.bitmap = bitmap;
  }
  const int64_t first = int64_t(qb) * p.query_block;
  const int64_t last = std::min<int64_t>(first + p.query_block, p.tokens) - 1;
  v.diag_first = p.keep_diagonal ? int(first / p.key_group) : 1;
  v.diag_last = p.keep_diagonal ? int(last / p.key_group) : 0;
  v.text_first = p.text_first_group;
  v.full_groups = p.tokens / p.key_group;
  if (p.keys_in_place) v.keys = reinterpret_cast<const uint32_t*>(p.mass) + row * p.ng;  // eligibility included
  if (cache) {
    uint32_t* keys = bitmap + bitmap_words(p);
    constexpr int kUnroll = 8;  // independent loads in flight per thread
    for (int g0 = threadIdx.x; g0 < p.ng; g0 += kSelThreads * kUnroll) {
      uint32_t k[kUnroll];
      bool ok[kUnroll];
#pragma unroll
      for (int i = 0; i < kUnroll; ++i) {
        const int g = g0 + i * kSelThreads;
        float m;
        ok[i] = g < p.ng && v.key(g, k[i], m);
      }
#pragma unroll
      for (int i = 0; i < kUnroll; ++i) {
        const int g = g0 + i * kSelThreads;
        if (g < p.ng) keys[g] = ok[i] ? k[i] : kIneligible;
      }
    }
    __syncthreads();
    v.keys = keys;
  }
  return v;
}

__device__ int64_t query_block_size(const SelectParams& p, int qb) {
  return std::min<int64_t>(p.query_block, int64_t(p.tokens) - int64_t(qb) * p.query_block);
}

// One CTA per row of the pass: the rule's cut (target_sparsity: from the per-head search), the capacity limit, the
// compaction.
__global__ void __launch_bounds__(kSelThreads) select_rows_kernel(SelectParams p) {
  __shared__ SelShared s;
  extern __shared__ uint32_t window_bits[];
  const int64_t row = blockIdx.x;
  const int hl = int(row / p.nq), qb = int(row % p.nq);
  const int64_t plan_row = int64_t(p.h0 + hl) * p.nq + qb;
  const auto rule = static_cast<SelectionRule>(p.rule);
  const RowView v = setup_row(p, row, window_bits, rule == SelectionRule::target_sparsity, p.cache_keys != 0);

  Cut cut = kKeepAll;
  bool have_cut = false;
  if (rule == SelectionRule::target_sparsity) {
    const DynHeadState& st = p.head_state[hl];
    cut = st.mode == 1   ? kKeepForced
          : st.mode == 3 ? Cut{st.cut_key, st.tie_count <= 1 ? kAllTies : p.row_ties[row].keep}
                         : kKeepAll;
    have_cut = true;
  } else if (rule == SelectionRule::threshold) {
    cut = Cut{p.threshold_key, kAllTies};
    have_cut = true;
  }
  // With the cut known (target_sparsity, threshold) the histogram serves only a row over the capacity, which then
  // builds it in count_select.
  const RowStats st = rule == SelectionRule::top_p ? row_pass0<true>(v, s, nullptr)
                      : have_cut                   ? row_pass0<false, false>(v, s, &cut)
                                                   : row_pass0<false>(v, s, nullptr);
  bool level0_ready = !have_cut;
  u64 n = st.by_cut;
  if (rule == SelectionRule::top_k) {
    n = st.forced + min(u64(p.k), st.eligible - st.forced);
  } else if (rule == SelectionRule::top_p) {
    u64 n_p = 0;
    cut = mass_select(v, s, p.p * double(st.mass), st.eligible, n_p);
    level0_ready = false;
    have_cut = true;
    n = max(n_p, st.forced);
    if (n > n_p) cut = kKeepForced;  // the always-kept groups alone reach p
  }
  if (n > u64(p.capacity) || !have_cut) {
    n = min(n, u64(p.capacity));
    cut = n == 0 ? kKeepNothing : n >= st.eligible ? kKeepAll : count_select(v, s, n, level0_ready);
  }
  compact_row(v, s, cut, p.table + plan_row * p.capacity, p.capacity, p.counts + plan_row);
}

// ---- target_sparsity: per-head weighted radix select over mass per key ----

// Level `level`: each row adds its other eligible groups (keys starting with the head's prefix) to the head's
// histogram, weighted by pairs; level 0 also counts the always-kept groups' pairs. Grid (chunks of
// kTargetHistRows query blocks, heads of the pass): a CTA sums its rows in shared memory and adds them to the head's
// histogram once, so the head's bins take kTargetHistRows times fewer global atomics.
__global__ void __launch_bounds__(kSelThreads) target_hist_kernel(SelectParams p, int level) {
  __shared__ uint32_t cnt[kBins];           // the current row's counts
  __shared__ uint32_t cta_count[kBins];     // the CTA's rows: counts and weights, flushed to the head once
  __shared__ u64 cta_weight[kBins];
  __shared__ u64 scratch[kSelWarps];
  __shared__ int last_bin;  // the bin of the last group (the one that may be short), -1: not counted
  extern __shared__ uint32_t window_bits[];
  const int hl = int(blockIdx.y);
  DynHeadState& st = p.head_state[hl];
  if (st.mode != 0) return;  // decided at an earlier level (never at level 0, which writes every row's keys)
  const uint32_t prefix = st.prefix;
  const int nb = level == 0 ? kBins : 1024, shift = kShift[level], up = shift + kBits[level];
  for (int i = threadIdx.x; i < nb; i += kSelThreads) cta_count[i] = 0, cta_weight[i] = 0;
  u64 cta_forced = 0;  // thread 0's sum of the rows' forced pairs
  const int qb_end = min(p.nq, int(blockIdx.x + 1) * kTargetHistRows);
  for (int qb = int(blockIdx.x) * kTargetHistRows; qb < qb_end; ++qb) {
    const int64_t row = int64_t(hl) * p.nq + qb;
    const RowView v = setup_row(p, row, window_bits, true);
    for (int i = threadIdx.x; i < nb; i += kSelThreads) cnt[i] = 0;
    if (threadIdx.x == 0) last_bin = -1;
    __syncthreads();
    u64 forced = 0;
    for_each_key(v, [&](int g, uint32_t key, float) {
      if (key >= kForcedBit) {
        forced += v.group_size(g);
        return;
      }
      if ((key >> up) != prefix) return;
      const int bin = int(key >> shift) & (nb - 1);
      add_count_at(cnt, bin, level);
      if (g == v.ng - 1) last_bin = bin;
    }, level == 0 ? reinterpret_cast<uint32_t*>(const_cast<float*>(p.mass)) + row * p.ng : nullptr);
    __syncthreads();
    // A bin's weight (key positions): key_group per group, less what the last group lacks. Each thread owns its
    // bins of the CTA's totals, so no atomics.
    const u64 short_by = u64(p.key_group - v.group_size(v.ng - 1));
    const u64 qs = u64(query_block_size(p, qb));
    for (int i = threadIdx.x; i < nb; i += kSelThreads)
      if (cnt[i] != 0) {
        cta_count[i] += cnt[i];
        cta_weight[i] += qs * (u64(cnt[i]) * u64(p.key_group) - (i == last_bin ? short_by : 0));
      }
    if (level == 0) cta_forced += qs * block_sum<u64>(forced, scratch);  // block_sum synchronises
    __syncthreads();  // the next row's setup rewrites cnt and the window bits
  }
  DynHeadHist& h = p.head_hist[hl];
  for (int i = threadIdx.x; i < nb; i += kSelThreads)
    if (cta_count[i] != 0) {
      atomicAdd(&h.count[i], cta_count[i]);
      atomicAdd(&h.weight[i], cta_weight[i]);
    }
  if (level == 0 && threadIdx.x == 0 && cta_forced != 0) atomicAdd(&st.forced_pairs, cta_forced);
}

// One CTA per head: the bin of level `level` in which the head's pairs reach the budget.
__global__ void __launch_bounds__(kSelThreads) target_scan_kernel(SelectParams p, int level) {
  __shared__ SelShared s;
  const int hl = blockIdx.x;
  DynHeadState& st = p.head_state[hl];
  if (st.mode != 0) return;
  DynHeadHist& h = p.head_hist[hl];
  const int nb = level == 0 ? kBins : 1024;
  for (int i = threadIdx.x; i < nb; i += kSelThreads) {
    s.cnt[i] = h.count[i], s.val[i] = h.weight[i];
    h.count[i] = 0, h.weight[i] = 0;  // ready for the next level
  }
  __syncthreads();
  double need = st.remaining;
  if (level == 0) {
    need = (1.0 - p.target_sparsity) * double(p.tokens) * double(p.tokens) - double(st.forced_pairs);
    if (!(need > 0.0)) {  // the always-kept groups alone meet the budget
      if (threadIdx.x == 0) st.mode = 1;
      return;
    }
  }
  find_crossing(s, nb, [&](int b) { return s.val[b]; }, 0, need);
  if (threadIdx.x == 0) {
    if (!s.cross.found) {  // only at level 0: every eligible group is needed
      st.mode = 2;
    } else {
      st.remaining = need - double(s.cross.above_val);
      st.prefix = (st.prefix << kBits[level]) | uint32_t(s.cross.bin);
      if (level == 2) {
        st.mode = 3;
        st.cut_key = st.prefix;
        st.tie_count = s.cnt[s.cross.bin];
      }
    }
  }
}

// Rows with pairs at the cut-off key (when there are several): how many and their weight.
__global__ void __launch_bounds__(kSelThreads) target_ties_kernel(SelectParams p) {
  __shared__ u64 scratch[kSelWarps];
  extern __shared__ uint32_t window_bits[];
  const int64_t row = blockIdx.x;
  const DynHeadState& st = p.head_state[row / p.nq];
  if (st.mode != 3 || st.tie_count <= 1) return;
  const RowView v = setup_row(p, row, window_bits, true);
  u64 ties = 0, weight = 0;
  for_each_key(v, [&](int g, uint32_t key, float) {
    if (key == st.cut_key) ++ties, weight += v.group_size(g);
  });
  ties = block_sum<u64>(ties, scratch);
  weight = block_sum<u64>(weight, scratch);
  if (threadIdx.x == 0)
    p.row_ties[row] = DynRowTies{uint32_t(ties), 0, u64(query_block_size(p, int(row % p.nq))) * weight};
}

// One CTA per head: the ties are taken in (query block, group) order until the budget is met; each row learns how
// many of its ties it keeps. Within a row every tie but the last group weighs query_block_size * key_group.
__global__ void __launch_bounds__(kSelThreads) target_tie_split_kernel(SelectParams p) {
  __shared__ u64 scratch[kSelWarps];
  const int hl = blockIdx.x;
  const DynHeadState& st = p.head_state[hl];
  if (st.mode != 3 || st.tie_count <= 1) return;
  const double remaining = st.remaining;
  u64 before = 0;
  for (int qb0 = 0; qb0 < p.nq; qb0 += kSelThreads) {
    const int qb = qb0 + int(threadIdx.x);
    const int64_t row = int64_t(hl) * p.nq + qb;
    const DynRowTies rt = qb < p.nq ? p.row_ties[row] : DynRowTies{0, 0, 0};
    u64 total;
    const u64 ex = block_exclusive_scan<u64>(rt.weight, total, scratch);
    if (qb < p.nq) {
      const double x = remaining - double(before + ex);  // tie i of the row is kept iff i * w < x
      u64 keep = 0;
      if (x > 0.0 && rt.ties > 0) {
        const u64 w = u64(query_block_size(p, qb)) * u64(min(p.key_group, p.tokens));
        keep = u64(fmin(ceil(x / double(w)), double(rt.ties)));
        while (keep > 1 && double((keep - 1) * w) >= x) --keep;
        while (keep < rt.ties && double(keep * w) < x) ++keep;
        keep = max(keep, u64(1));
      }
      p.row_ties[row].keep = uint32_t(keep);
    }
    before += total;
  }
}

}  // namespace
}  // namespace kernels
}  // namespace tileattn

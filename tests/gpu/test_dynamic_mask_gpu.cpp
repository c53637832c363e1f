// The GPU dynamic mask builder (dynamic_mask_gpu.hpp) against the CPU oracle (dynamic_mask.hpp) on random shapes.
// Skips without a Hopper GPU. The seed comes from TILEATTN_TEST_SEED or std::random_device and is printed.
//
// Each case is checked in three layers:
//  masses     the GPU estimate against estimate_column_mass on "pooled" queries (every block's rows replaced by the
//             block's mean computed as the GPU does: fp32 sum in row order, / rows, rounded to the dtype), to fp32
//             accuracy; and against estimate_column_mass on the raw queries, to the dtype's rounding of that mean.
//  selection  the GPU plan against the GPU's documented semantics replayed on the host from the GPU's own masses
//             (priority keys, 2^-40 fixed-point sums for top_p, fp32 mass per key for target_sparsity, capacity):
//             equal, row for row.
//  oracle     the GPU plan against the oracle (select_columns on the pooled-query masses, i.e.
//             build_dynamic_column_plan): a group may differ only where the oracle's masses put it within 1e-3
//             (relative) of the row's cut-off, checked rule by rule, so a wrong count or order still fails.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "sta_case.hpp"
#include "tileattn/column_plan.hpp"
#include "tileattn/detail/testing.hpp"
#include "tileattn/dynamic_mask.hpp"
#include "tileattn/dynamic_mask_gpu.hpp"
#include "tileattn/error.hpp"
#include "tileattn/fg.hpp"

using namespace tileattn;
using namespace tileattn::testing;

namespace {

void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// A device allocation freed at scope exit.
struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(size_t bytes) { cuda_check(cudaMalloc(&p, std::max<size_t>(bytes, 4)), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

// A DeviceColumnPlan with its buffers.
struct DevicePlan {
  DeviceBuffer table, counts;
  DeviceColumnPlan plan;
  DevicePlan(const ColumnPlanShape& shape, int64_t capacity)
      : table(size_t(shape.num_rows() * capacity) * 4), counts(size_t(shape.num_rows()) * 4) {
    plan.shape = shape, plan.capacity = capacity;
    plan.table = table.as<int32_t>(), plan.counts = counts.as<int32_t>();
    fill_garbage();
  }
  void fill_garbage() {  // every slot and count must be written
    cuda_check(cudaMemset(plan.table, 0x5A, size_t(plan.shape.num_rows() * plan.capacity) * 4), "cudaMemset");
    cuda_check(cudaMemset(plan.counts, 0x5A, size_t(plan.shape.num_rows()) * 4), "cudaMemset");
  }
  void upload(const FixedColumnPlan& f) {
    cuda_check(cudaMemcpy(plan.table, f.table.data(), f.table.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
    cuda_check(cudaMemcpy(plan.counts, f.counts.data(), f.counts.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  FixedColumnPlan download() const {
    FixedColumnPlan f{plan.shape, plan.capacity, std::vector<int32_t>(plan.shape.num_rows() * plan.capacity),
                      std::vector<int32_t>(plan.shape.num_rows())};
    cuda_check(cudaMemcpy(f.table.data(), plan.table, f.table.size() * 4, cudaMemcpyDeviceToHost), "cudaMemcpy");
    cuda_check(cudaMemcpy(f.counts.data(), plan.counts, f.counts.size() * 4, cudaMemcpyDeviceToHost), "cudaMemcpy");
    return f;
  }
};

const char* rule_name(SelectionRule r) {
  switch (r) {
    case SelectionRule::top_p: return "top_p";
    case SelectionRule::top_k: return "top_k";
    case SelectionRule::threshold: return "threshold";
    case SelectionRule::target_sparsity: return "target_sparsity";
  }
  return "?";
}

struct MaskCase {
  std::string name;
  int64_t batch = 1, q_heads = 2, kv_heads = 1, head_dim = 128, tokens = 500, M = 64, N = 8;
  DType dtype = DType::bf16;
  float scale = 0.0f;
  float sharpness = 1.0f;  // spread of each (batch, head)'s shared query direction: larger = peakier estimate
  bool bshd = false;       // tensors stored [B, S, H, D]
  int key_patterns = 0;    // > 0: every key is one of this many vectors (key j: pattern j % key_patterns): tied masses
  int query_patterns = 0;  // > 0: likewise for the queries (1 with key_patterns 1: every group of a head ties)
  ColumnSelection sel;     // sel.window stays null; the window is window_density's
  double window_density = 0.0;  // > 0: a random window keeping about this fraction of each row's groups
  int64_t capacity = -1;        // -1: num_key_groups (no row can overflow)
  int64_t heads_per_pass = 0;
  ColumnPlanShape shape() const { return {tokens, q_heads, M, N}; }
};

std::ostream& operator<<(std::ostream& os, const MaskCase& c) {
  const ColumnSelection& s = c.sel;
  os << c.name << ": B=" << c.batch << " Hq=" << c.q_heads << " Hkv=" << c.kv_heads << " D=" << c.head_dim
     << " T=" << c.tokens << " M=" << c.M << " N=" << c.N << (c.dtype == DType::fp16 ? " fp16" : " bf16")
     << " scale=" << c.scale << " sharp=" << c.sharpness << (c.bshd ? " bshd" : "") << " rule=" << rule_name(s.rule)
     << " p=" << s.p << " k=" << s.k << " thr=" << s.threshold << " target=" << s.target_sparsity
     << " diag=" << s.keep_diagonal << " text=" << s.always_keep_text << "/" << s.text_len
     << " window=" << c.window_density << " cap=" << c.capacity << " hpp=" << c.heads_per_pass
     << " key_patterns=" << c.key_patterns << " query_patterns=" << c.query_patterns;
  return os;
}

// ---- inputs ----

struct Inputs {
  std::vector<float> q, k;  // [B, H, S, D] natural, rounded to the dtype
  std::vector<float> q_pooled;  // q with each block's rows replaced by the GPU's pooled query
  std::vector<uint16_t> q_bits, k_bits;
};

Inputs make_inputs(const MaskCase& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  const int64_t n = c.tokens, d = c.head_dim, nq = c.shape().num_query_blocks();
  Inputs in;
  auto fill = [&](int64_t heads, float base_sigma, std::vector<float>& values, std::vector<uint16_t>& bits) {
    values.resize(c.batch * heads * n * d), bits.resize(values.size());
    for (int64_t bh = 0; bh < c.batch * heads; ++bh) {
      std::vector<float> base(d);
      for (float& x : base) x = base_sigma * normal(rng);
      for (int64_t i = 0; i < n * d; ++i) {
        const size_t at = size_t(bh * n * d + i);
        bits[at] = detail::float_to_half_bits(normal(rng) + base[i % d], c.dtype);
        values[at] = detail::half_bits_to_float(bits[at], c.dtype);
      }
    }
  };
  fill(c.q_heads, c.sharpness, in.q, in.q_bits);
  fill(c.kv_heads, 0.0f, in.k, in.k_bits);
  auto repeat = [&](int patterns, int64_t heads, std::vector<float>& values, std::vector<uint16_t>& bits) {
    for (int64_t bh = 0; patterns > 0 && bh < c.batch * heads; ++bh)
      for (int64_t j = patterns; j < n; ++j)
        for (int64_t col = 0; col < d; ++col) {
          const size_t to = size_t((bh * n + j) * d + col), from = size_t((bh * n + j % patterns) * d + col);
          values[to] = values[from], bits[to] = bits[from];
        }
  };
  repeat(c.key_patterns, c.kv_heads, in.k, in.k_bits);
  repeat(c.query_patterns, c.q_heads, in.q, in.q_bits);
  in.q_pooled = in.q;
  for (int64_t bh = 0; bh < c.batch * c.q_heads; ++bh)
    for (int64_t qb = 0; qb < nq; ++qb) {
      const int64_t first = qb * c.M, rows = std::min(c.M, n - first);
      for (int64_t col = 0; col < d; ++col) {
        float sum = 0.0f;  // as the GPU: fp32, row order, then / rows, rounded to the dtype
        for (int64_t i = first; i < first + rows; ++i) sum += in.q[(bh * n + i) * d + col];
        const float mean = detail::half_bits_to_float(
            detail::float_to_half_bits(sum / float(rows), c.dtype), c.dtype);
        for (int64_t i = first; i < first + rows; ++i) in.q_pooled[(bh * n + i) * d + col] = mean;
      }
    }
  return in;
}

// Host [B, H, S, D] bits -> the case's memory layout.
std::vector<uint16_t> to_layout(const MaskCase& c, const std::vector<uint16_t>& src, int64_t heads) {
  if (!c.bshd) return src;
  const int64_t n = c.tokens, d = c.head_dim;
  std::vector<uint16_t> out(src.size());
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t s = 0; s < n; ++s)
        std::copy_n(&src[((b * heads + h) * n + s) * d], d, &out[((b * n + s) * heads + h) * d]);
  return out;
}

DeviceTensor tensor(const MaskCase& c, void* p, int64_t heads) {
  const int64_t n = c.tokens, d = c.head_dim;
  return c.bshd ? DeviceTensor{p, n * heads * d, d, heads * d} : DeviceTensor{p, heads * n * d, n * d, d};
}

// A random window: each row keeps each group with probability `density`, and its diagonal group.
ColumnPlan random_window(const ColumnPlanShape& s, double density, std::mt19937_64& rng) {
  std::bernoulli_distribution keep(density);
  std::vector<std::vector<int32_t>> rows(s.num_rows());
  for (int64_t r = 0; r < s.num_rows(); ++r) {
    const int64_t diag = (r % s.num_query_blocks()) * s.query_block / s.key_group;
    for (int64_t g = 0; g < s.num_key_groups(); ++g)
      if (g == diag || keep(rng)) rows[r].push_back(int32_t(g));
  }
  return ColumnPlan::from_rows(s, rows);
}

// ---- the GPU's semantics, replayed on the host ----

struct RowInfo {
  std::vector<char> eligible, forced;
};

RowInfo row_info(const ColumnPlanShape& s, const ColumnSelection& sel, const ColumnPlan* window, int64_t h,
                 int64_t qb) {
  const int64_t ng = s.num_key_groups();
  RowInfo r{std::vector<char>(ng, window ? 0 : 1), std::vector<char>(ng, 0)};
  if (window)
    for (int32_t g : window->row(h, qb)) r.eligible[g] = 1;
  const int64_t first = qb * s.query_block, last = first + s.query_block_size(qb) - 1;
  for (int64_t g = 0; g < ng; ++g) {
    const bool diag = sel.keep_diagonal && g >= first / s.key_group && g <= last / s.key_group;
    const bool text = sel.always_keep_text && g * s.key_group + s.key_group_size(g) > s.tokens - sel.text_len;
    r.forced[g] = r.eligible[g] && (diag || text);
  }
  return r;
}

float sanitized(float m) { return m >= 0.0f ? std::min(m, 1.75f) : 0.0f; }
uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
// The GPU's priority key (see dynamic_mask_gpu.hpp): forced groups first by mass, then the others by mass (or, for
// target_sparsity, by the fp32 mass per key).
uint32_t priority_key(float mass, bool forced, bool density, int64_t size) {
  const float m = sanitized(mass);
  if (forced) return bits_of(m) | (1u << 30);
  return bits_of(density ? m / float(size) : m);
}
uint64_t fixed40(float m) { return uint64_t(std::nearbyint(double(sanitized(m)) * 1099511627776.0)); }

// Eligible groups by descending priority key, ties to the lower index.
std::vector<int32_t> priority_order(const ColumnPlanShape& s, const float* mass, const RowInfo& info, bool density,
                                    std::vector<uint32_t>& keys) {
  const int64_t ng = s.num_key_groups();
  keys.assign(ng, 0);
  std::vector<int32_t> order;
  for (int64_t g = 0; g < ng; ++g)
    if (info.eligible[g]) {
      keys[g] = priority_key(mass[g], info.forced[g], density, s.key_group_size(g));
      order.push_back(int32_t(g));
    }
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return keys[a] > keys[b]; });
  return order;
}

// The plan the GPU must produce from masses [heads, nq, ng] (fp32).
std::vector<std::vector<int32_t>> replay_gpu_selection(const MaskCase& c, const std::vector<float>& mass,
                                                       const ColumnPlan* window, int64_t capacity) {
  const ColumnPlanShape s = c.shape();
  const ColumnSelection& sel = c.sel;
  const int64_t nq = s.num_query_blocks(), ng = s.num_key_groups();
  const bool target = sel.rule == SelectionRule::target_sparsity;
  std::vector<std::vector<int32_t>> rows(s.num_rows());
  for (int64_t h = 0; h < s.heads; ++h) {
    std::vector<std::vector<int32_t>> orders(nq);
    std::vector<std::vector<uint32_t>> keys(nq);
    std::vector<RowInfo> infos;
    std::vector<int64_t> n(nq, 0), forced(nq, 0);
    for (int64_t qb = 0; qb < nq; ++qb) {
      infos.push_back(row_info(s, sel, window, h, qb));
      const float* m = &mass[(h * nq + qb) * ng];
      orders[qb] = priority_order(s, m, infos[qb], target, keys[qb]);
      for (int32_t g : orders[qb]) forced[qb] += infos[qb].forced[g];
      const int64_t eligible = int64_t(orders[qb].size()), ranked = eligible - forced[qb];
      switch (sel.rule) {
        case SelectionRule::top_k:
          n[qb] = forced[qb] + std::min<int64_t>(sel.k, ranked);
          break;
        case SelectionRule::threshold: {
          // the threshold as the GPU compares it: fp32 masses against double
          int64_t above = 0;
          for (int32_t g : orders[qb]) above += !infos[qb].forced[g] && double(sanitized(m[g])) >= sel.threshold;
          n[qb] = forced[qb] + above;
          break;
        }
        case SelectionRule::top_p: {
          uint64_t total = 0;
          for (int32_t g : orders[qb]) total += fixed40(m[g]);
          const double want = sel.p * double(total);
          int64_t np = eligible;
          if (!(want > 0.0)) {
            np = 0;
          } else {
            uint64_t covered = 0;
            for (int64_t i = 0; i < eligible; ++i) {
              covered += fixed40(m[orders[qb][i]]);
              if (double(covered) >= want) {
                np = i + 1;
                break;
              }
            }
          }
          n[qb] = std::max(np, forced[qb]);
          break;
        }
        case SelectionRule::target_sparsity:
          break;
      }
    }
    if (target) {
      // One order for the head: mass-per-key key descending, then query block, then group.
      struct Entry {
        uint32_t key;
        int64_t qb;
        int32_t g;
      };
      std::vector<Entry> entries;
      uint64_t forced_pairs = 0;
      for (int64_t qb = 0; qb < nq; ++qb)
        for (int32_t g : orders[qb]) {
          if (infos[qb].forced[g])
            forced_pairs += uint64_t(s.query_block_size(qb) * s.key_group_size(g));
          else
            entries.push_back({keys[qb][g], qb, g});
        }
      std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.key > b.key; });
      const double need = (1.0 - sel.target_sparsity) * double(s.tokens) * double(s.tokens) - double(forced_pairs);
      for (int64_t qb = 0; qb < nq; ++qb) n[qb] = forced[qb];
      uint64_t taken = 0;
      for (const Entry& e : entries) {
        if (!(double(taken) < need)) break;
        ++n[e.qb];  // a prefix of the row's priority order, as entries of a row come in that order
        taken += uint64_t(s.query_block_size(e.qb) * s.key_group_size(e.g));
      }
    }
    for (int64_t qb = 0; qb < nq; ++qb) {
      std::vector<int32_t>& row = rows[h * nq + qb];
      row.assign(orders[qb].begin(), orders[qb].begin() + std::min(n[qb], capacity));
      std::sort(row.begin(), row.end());
    }
  }
  return rows;
}

// ---- checks ----

// Counts within [0, capacity], rows strictly ascending within [0, ng), unused slots -1.
ColumnPlan check_structure(const FixedColumnPlan& f) {
  for (int64_t r = 0; r < f.shape.num_rows(); ++r) {
    const int32_t count = f.counts[r];
    if (count < 0 || count > f.capacity) continue;  // from_fixed reports it
    for (int64_t i = count; i < f.capacity; ++i)
      if (f.table[r * f.capacity + i] != -1) {
        ADD_FAILURE() << "row " << r << " slot " << i << " (count " << count << ") holds "
                      << f.table[r * f.capacity + i] << ", expected -1";
        break;
      }
  }
  return ColumnPlan::from_fixed(f);  // throws ArgumentError on bad counts or rows
}

// Reports at most a few failures per check, then a total.
struct FailureLog {
  const char* what;
  int64_t count = 0;
  template <class F>
  void fail(F&& describe) {
    if (count++ < 5) ADD_FAILURE() << what << ": " << describe();
  }
  ~FailureLog() {
    if (count > 5) ADD_FAILURE() << what << ": " << count << " failures in all";
  }
};

void expect_masses(const MaskCase& c, const std::vector<float>& gpu, const ColumnMass& pooled, const ColumnMass& raw) {
  const ColumnPlanShape s = c.shape();
  const int64_t ng = s.num_key_groups();
  FailureLog tight{"mass vs oracle on pooled queries"}, sums{"row sum"}, loose{"mass vs oracle on raw queries"};
  const double raw_l1 = c.dtype == DType::bf16 ? 5e-2 : 1e-2;  // the pooled query's rounding to the dtype
  double worst = 0, worst_raw = 0;
  for (int64_t r = 0; r < s.num_rows(); ++r) {
    double sum = 0, l1 = 0;
    for (int64_t g = 0; g < ng; ++g) {
      const double got = gpu[r * ng + g], want = pooled.mass[r * ng + g];
      sum += got;
      l1 += std::fabs(got - raw.mass[r * ng + g]);
      worst = std::max(worst, std::fabs(got - want) / (want + 1e-12));
      if (!(std::fabs(got - want) <= 1e-3 * want + 1e-12))
        tight.fail([&] { return "row " + std::to_string(r) + " group " + std::to_string(g) + ": gpu " +
                                std::to_string(got) + " oracle " + std::to_string(want); });
    }
    worst_raw = std::max(worst_raw, l1);
    if (!(std::fabs(sum - 1.0) <= 1e-4)) sums.fail([&] { return "row " + std::to_string(r) + " sums to " + std::to_string(sum); });
    if (!(l1 <= raw_l1)) loose.fail([&] { return "row " + std::to_string(r) + ": L1 distance " + std::to_string(l1); });
  }
  std::printf("    masses: max rel err vs pooled oracle %.2e, max row L1 vs raw oracle %.2e\n", worst, worst_raw);
}

void expect_replayed(const ColumnPlan& gpu, const std::vector<std::vector<int32_t>>& want) {
  FailureLog log{"GPU plan vs its semantics replayed on its masses"};
  const int64_t nq = gpu.num_query_blocks();
  for (int64_t r = 0; r < gpu.shape().num_rows(); ++r) {
    const auto row = gpu.row(r / nq, r % nq);
    if (!std::equal(row.begin(), row.end(), want[r].begin(), want[r].end()))
      log.fail([&] {
        std::string s = "row " + std::to_string(r) + ": gpu has " + std::to_string(row.size()) + " groups, expected " +
                        std::to_string(want[r].size()) + "; first difference at";
        size_t i = 0;
        while (i < row.size() && i < want[r].size() && row[i] == want[r][i]) ++i;
        return s + " position " + std::to_string(i);
      });
  }
}

// The oracle (select_columns on the pooled-query masses) vs the GPU plan, allowing only near-cut differences.
void expect_near_oracle(const MaskCase& c, const ColumnMass& ref, const ColumnPlan& oracle, const ColumnPlan& gpu,
                        const ColumnPlan* window) {
  const ColumnPlanShape s = c.shape();
  const ColumnSelection& sel = c.sel;
  const int64_t nq = s.num_query_blocks(), ng = s.num_key_groups();
  const double rtol = 1e-3, atol = 1e-12, ctol = 1e-4;
  FailureLog log{"GPU plan vs oracle"};
  int64_t differing_rows = 0;
  for (int64_t h = 0; h < s.heads; ++h) {
    // target_sparsity, per head: kept ranked pairs by mass per key, and the pairs visited
    double min_kept = INFINITY, max_left = -1;
    uint64_t visited = 0, forced_pairs = 0;
    bool any_kept = false, all_kept = true;
    for (int64_t qb = 0; qb < nq; ++qb) {
      const RowInfo info = row_info(s, sel, window, h, qb);
      const auto m = ref.row(h, qb);
      const auto grow = gpu.row(h, qb), orow = oracle.row(h, qb);
      const std::set<int32_t> gset(grow.begin(), grow.end()), oset(orow.begin(), orow.end());
      differing_rows += gset != oset;
      const std::string where = "head " + std::to_string(h) + " block " + std::to_string(qb);
      std::vector<int32_t> ranked_kept, ranked_left;
      double eligible_mass = 0, forced_mass = 0;
      for (int64_t g = 0; g < ng; ++g) {
        const bool kept = gset.count(int32_t(g)) != 0;
        if (kept && !info.eligible[g]) log.fail([&] { return where + ": group " + std::to_string(g) + " is outside the window"; });
        if (!info.eligible[g]) continue;
        eligible_mass += m[g];
        if (info.forced[g]) {
          forced_mass += m[g];
          forced_pairs += uint64_t(s.query_block_size(qb) * s.key_group_size(g));
          if (!kept) log.fail([&] { return where + ": always-kept group " + std::to_string(g) + " is missing"; });
          continue;
        }
        (kept ? ranked_kept : ranked_left).push_back(int32_t(g));
      }
      for (int32_t g : grow) visited += uint64_t(s.query_block_size(qb) * s.key_group_size(g));
      auto mass_of = [&](int32_t g) { return m[g]; };
      auto density = [&](int32_t g) { return m[g] / double(s.key_group_size(g)); };
      double kept_min = INFINITY, left_max = -1, covered = forced_mass;
      for (int32_t g : ranked_kept) kept_min = std::min(kept_min, mass_of(g)), covered += mass_of(g);
      for (int32_t g : ranked_left) left_max = std::max(left_max, mass_of(g));
      for (int32_t g : ranked_kept) min_kept = std::min(min_kept, density(g));
      for (int32_t g : ranked_left) max_left = std::max(max_left, density(g));
      any_kept = any_kept || !ranked_kept.empty();
      all_kept = all_kept && ranked_left.empty();
      // symmetric difference among the ranked groups
      std::vector<int32_t> diff;
      for (int64_t g = 0; g < ng; ++g)
        if (info.eligible[g] && !info.forced[g] && (gset.count(int32_t(g)) != oset.count(int32_t(g))))
          diff.push_back(int32_t(g));
      switch (sel.rule) {
        case SelectionRule::top_k: {
          int64_t o_ranked = 0;
          for (int32_t g : orow) o_ranked += !info.forced[g];
          if (int64_t(ranked_kept.size()) != o_ranked)
            log.fail([&] { return where + ": keeps " + std::to_string(ranked_kept.size()) + " ranked groups, the oracle " + std::to_string(o_ranked); });
          double cut = INFINITY;
          for (int32_t g : orow)
            if (!info.forced[g]) cut = std::min(cut, m[g]);
          for (int32_t g : diff)
            if (!(std::fabs(m[g] - cut) <= rtol * cut + atol))
              log.fail([&] { return where + ": group " + std::to_string(g) + " (mass " + std::to_string(m[g]) + ") differs, cut-off " + std::to_string(cut); });
          break;
        }
        case SelectionRule::threshold:
          for (int32_t g : diff)
            if (!(std::fabs(m[g] - sel.threshold) <= rtol * sel.threshold + atol))
              log.fail([&] { return where + ": group " + std::to_string(g) + " (mass " + std::to_string(m[g]) + ") differs at threshold " + std::to_string(sel.threshold); });
          break;
        case SelectionRule::top_p: {
          const double target = sel.p * eligible_mass;
          if (!ranked_kept.empty() && !(left_max <= kept_min * (1 + rtol) + atol))
            log.fail([&] { return where + ": leaves a group of mass " + std::to_string(left_max) + " but keeps one of " + std::to_string(kept_min); });
          if (!ranked_kept.empty() && !(covered - kept_min < target * (1 + ctol) + atol))
            log.fail([&] { return where + ": keeps more than needed (covered " + std::to_string(covered) + ", target " + std::to_string(target) + ")"; });
          if (!ranked_left.empty() && !(covered >= target * (1 - ctol) - atol))
            log.fail([&] { return where + ": covers " + std::to_string(covered) + " < target " + std::to_string(target); });
          break;
        }
        case SelectionRule::target_sparsity:
          break;
      }
    }
    if (sel.rule == SelectionRule::target_sparsity) {
      const std::string where = "head " + std::to_string(h);
      const double need = (1.0 - sel.target_sparsity) * double(s.tokens) * double(s.tokens);
      if (any_kept && !(max_left <= min_kept * (1 + rtol) + 1e-15))
        log.fail([&] { return where + ": leaves mass per key " + std::to_string(max_left) + " but keeps " + std::to_string(min_kept); });
      if (double(forced_pairs) >= need) {
        if (any_kept) log.fail([&] { return where + ": the always-kept groups meet the budget, yet others are kept"; });
      } else if (!all_kept) {
        if (!(double(visited) >= need))
          log.fail([&] { return where + ": visits " + std::to_string(visited) + " pairs < " + std::to_string(need); });
        if (!(double(visited) < need + double(c.M * c.N)))
          log.fail([&] { return where + ": visits " + std::to_string(visited) + " pairs, more than a group over " + std::to_string(need); });
      }
    }
  }
  std::printf("    rows differing from the oracle (near-cut): %lld of %lld\n", static_cast<long long>(differing_rows),
              static_cast<long long>(s.num_rows()));
}

DynamicMaskArgs make_args(const MaskCase& c, void* q, void* k) {
  DynamicMaskArgs a;
  a.dtype = c.dtype, a.batch = c.batch, a.q_heads = c.q_heads, a.kv_heads = c.kv_heads, a.head_dim = c.head_dim;
  a.q = tensor(c, q, c.q_heads), a.k = tensor(c, k, c.kv_heads);
  a.scale = c.scale;
  a.selection = c.sel;
  return a;
}

// Runs one case through all three layers of checks.
void run_case(const MaskCase& c, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << c << " seed " << seed);
  std::printf("  %s\n", c.name.c_str());
  const ColumnPlanShape s = c.shape();
  const int64_t ng = s.num_key_groups(), capacity = c.capacity < 0 ? ng : c.capacity;
  const Inputs in = make_inputs(c, seed);
  DeviceBuffer dq(in.q_bits.size() * 2), dk(in.k_bits.size() * 2);
  const auto ql = to_layout(c, in.q_bits, c.q_heads), kl = to_layout(c, in.k_bits, c.kv_heads);
  CUDA_OK(cudaMemcpy(dq.p, ql.data(), ql.size() * 2, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dk.p, kl.data(), kl.size() * 2, cudaMemcpyHostToDevice));
  DynamicMaskArgs a = make_args(c, dq.p, dk.p);

  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  std::optional<ColumnPlan> window;
  std::optional<DevicePlan> dwindow;
  if (c.window_density > 0) {
    window = random_window(s, c.window_density, rng);
    const int64_t wcap = window->max_row_length() + 3;  // spare slots (-1) must be ignored
    dwindow.emplace(s, wcap);
    dwindow->upload(window->to_fixed(wcap));
    a.window = &dwindow->plan;
  }
  const int64_t ws = dynamic_mask_workspace_bytes(a, s, c.heads_per_pass);
  DeviceBuffer workspace{size_t(ws)};
  CUDA_OK(cudaMemset(workspace.p, 0xFF, size_t(ws)));  // nothing may depend on the workspace's old content
  a.workspace = workspace.p, a.workspace_bytes = ws;

  DeviceBuffer dmass(size_t(s.num_rows() * ng) * 4);
  estimate_column_mass_gpu(a, s, dmass.as<float>(), nullptr);
  DevicePlan out(s, capacity);
  build_dynamic_column_plan_gpu(a, out.plan, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<float> mass(size_t(s.num_rows() * ng));
  CUDA_OK(cudaMemcpy(mass.data(), dmass.p, mass.size() * 4, cudaMemcpyDeviceToHost));
  const ColumnPlan gpu = check_structure(out.download());

  // masses
  const AttentionShape shape{c.batch, c.q_heads, c.kv_heads, c.tokens, c.head_dim};
  const ColumnMass pooled = estimate_column_mass(shape, in.q_pooled, in.k, c.M, c.N, c.scale);
  const ColumnMass raw = estimate_column_mass(shape, in.q, in.k, c.M, c.N, c.scale);
  expect_masses(c, mass, pooled, raw);
  // selection: the GPU's own semantics on its own masses
  expect_replayed(gpu, replay_gpu_selection(c, mass, window ? &*window : nullptr, capacity));
  // oracle, when no row is cut by the capacity
  if (capacity >= ng) {
    ColumnSelection sel = c.sel;
    sel.window = window ? &*window : nullptr;
    expect_near_oracle(c, pooled, select_columns(pooled, sel), gpu, window ? &*window : nullptr);
  }
  std::printf("    sparsity %.3f, longest row %lld of %lld groups\n", gpu.sparsity().total,
              static_cast<long long>(gpu.max_row_length()), static_cast<long long>(ng));
}

MaskCase random_case(std::mt19937_64& rng, const std::string& name) {
  auto r = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  auto u = [&](double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); };
  MaskCase c;
  c.name = name;
  c.kv_heads = r(1, 2);
  c.q_heads = c.kv_heads * r(1, 3);
  c.batch = r(1, 2);
  c.head_dim = r(0, 1) ? 128 : 64;
  c.dtype = r(0, 3) ? DType::bf16 : DType::fp16;
  c.tokens = r(0, 3) ? r(100, 2000) : r(1, 99);
  c.M = int64_t{16} << r(0, 3);
  const int64_t groups[] = {1, 1, 2, 3, 7, 8, 16, 31, 32, 64, 100, 128, 300};
  c.N = r(0, 4) ? groups[r(0, 12)] : r(1, 300);
  c.scale = r(0, 3) ? 0.0f : float(u(0.02, 0.15));
  c.sharpness = float(u(0.3, 2.0));
  c.bshd = r(0, 3) == 0;
  const int64_t ng = c.shape().num_key_groups();
  ColumnSelection& s = c.sel;
  s.rule = static_cast<SelectionRule>(r(0, 3));
  s.p = r(0, 5) ? u(0.3, 0.99) : 1.0;
  s.k = r(0, 5) ? r(0, std::max<int64_t>(1, ng / 3)) : r(0, ng + 2);
  s.threshold = u(0.0, 3.0) / double(ng);
  s.target_sparsity = u(0.0, 0.97);
  s.keep_diagonal = r(0, 3) != 0;
  s.always_keep_text = r(0, 2) == 0;
  s.text_len = r(0, std::min<int64_t>(c.tokens, 300));
  c.window_density = r(0, 2) == 0 ? u(0.2, 0.8) : 0.0;
  c.heads_per_pass = r(0, 1) ? 0 : r(1, c.q_heads);
  c.capacity = r(0, 4) == 0 ? r(0, std::max<int64_t>(1, ng / 2)) : -1;
  return c;
}

class DynamicMaskGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_kernels_available()) GTEST_SKIP() << "no Hopper (sm_90) GPU: GPU mask builder tests skipped";
  }
};

TEST_F(DynamicMaskGpu, RandomizedShapesAndRules) {
  std::mt19937_64 rng(test_seed());
  for (int trial = 0; trial < 40; ++trial) {
    const MaskCase c = random_case(rng, "random #" + std::to_string(trial));
    run_case(c, test_seed() * 1000003 + uint64_t(trial));
    if (HasFatalFailure()) return;
  }
}

// Every rule on one shape (N = 1, and a partial last group), with and without the window.
TEST_F(DynamicMaskGpu, EachRuleWithAndWithoutWindow) {
  for (int64_t n : {1, 24}) {
    for (int rule = 0; rule < 4; ++rule) {
      for (double window : {0.0, 0.5}) {
        MaskCase c;
        c.name = std::string(rule_name(SelectionRule(rule))) + " N=" + std::to_string(n) + (window > 0 ? " window" : "");
        c.batch = 2, c.q_heads = 4, c.kv_heads = 2, c.tokens = 1000, c.M = 64, c.N = n;
        c.sel.rule = SelectionRule(rule);
        c.sel.p = 0.8, c.sel.k = 5, c.sel.threshold = 1.0 / double(c.shape().num_key_groups());
        c.sel.target_sparsity = 0.8;
        c.sel.always_keep_text = true, c.sel.text_len = 77;
        c.window_density = window;
        run_case(c, test_seed() + uint64_t(rule * 10 + n));
      }
    }
  }
}

TEST_F(DynamicMaskGpu, EdgeShapes) {
  std::vector<MaskCase> cases;
  auto add = [&](const std::string& name, auto&& edit) {
    MaskCase c;
    c.name = name;
    c.sel.rule = SelectionRule::top_p;
    edit(c);
    cases.push_back(c);
  };
  add("one token", [](MaskCase& c) { c.tokens = 1, c.M = 16, c.N = 1; });
  add("tokens < one key tile", [](MaskCase& c) { c.tokens = 37, c.M = 16, c.N = 5; });
  add("one group (N > tokens)", [](MaskCase& c) { c.tokens = 300, c.N = 1000; });
  add("N = tokens, top_k 0", [](MaskCase& c) { c.tokens = 200, c.N = 200, c.sel.rule = SelectionRule::top_k, c.sel.k = 0; });
  add("D64 fp16 N=1 M=128", [](MaskCase& c) { c.head_dim = 64, c.dtype = DType::fp16, c.tokens = 1500, c.M = 128, c.N = 1; });
  add("GQA 6:2, one head per pass", [](MaskCase& c) { c.q_heads = 6, c.kv_heads = 2, c.heads_per_pass = 1, c.tokens = 700; });
  add("GQA 6:2, four heads per pass -> 3", [](MaskCase& c) { c.q_heads = 6, c.kv_heads = 2, c.heads_per_pass = 4, c.tokens = 700, c.sel.rule = SelectionRule::target_sparsity; });
  add("GQA 6:1, two heads per pass", [](MaskCase& c) { c.q_heads = 6, c.kv_heads = 1, c.heads_per_pass = 2, c.tokens = 650, c.N = 3, c.sel.rule = SelectionRule::top_k, c.sel.k = 7; });
  add("peaky, threshold", [](MaskCase& c) { c.sharpness = 4.0f, c.sel.rule = SelectionRule::threshold, c.sel.threshold = 1e-3; });
  add("peaky, target 0.95", [](MaskCase& c) { c.sharpness = 4.0f, c.sel.rule = SelectionRule::target_sparsity, c.sel.target_sparsity = 0.95; });
  add("target 0 keeps everything", [](MaskCase& c) { c.sel.rule = SelectionRule::target_sparsity, c.sel.target_sparsity = 0.0; });
  add("target 0.99, M=16 N=1 text", [](MaskCase& c) { c.tokens = 900, c.M = 16, c.N = 1, c.sel.rule = SelectionRule::target_sparsity, c.sel.target_sparsity = 0.99, c.sel.always_keep_text = true, c.sel.text_len = 100; });
  add("capacity 0", [](MaskCase& c) { c.capacity = 0; });
  add("capacity 3, top_p", [](MaskCase& c) { c.capacity = 3, c.N = 4; });
  add("capacity 2 < diagonal groups, top_k", [](MaskCase& c) { c.capacity = 2, c.M = 128, c.N = 16, c.sel.rule = SelectionRule::top_k, c.sel.k = 4; });
  add("capacity 5, target, text", [](MaskCase& c) { c.capacity = 5, c.N = 2, c.sel.rule = SelectionRule::target_sparsity, c.sel.always_keep_text = true, c.sel.text_len = 64; });
  // The one-pass estimate's register group sums (batch 1, N = 8, 16, 32, 64): several key splits, a partial last
  // key tile and, for N > 8, a partial last group (2003 = 31 * 64 + 19).
  for (int64_t n : {8, 16, 32, 64})
    add("register groups N=" + std::to_string(n), [&](MaskCase& c) {
      c.tokens = 2003, c.N = n, c.M = 32, c.q_heads = 2, c.sel.rule = SelectionRule(n / 8 % 4);
      c.sel.k = 9, c.sel.p = 0.7, c.sel.target_sparsity = 0.7, c.sel.threshold = 1.0 / double(c.shape().num_key_groups());
    });
  add("batch 2 BSHD, scale", [](MaskCase& c) { c.batch = 2, c.bshd = true, c.scale = 0.05f, c.tokens = 1234, c.N = 9; });
  // Tied masses: every key is one of three vectors, so groups of the same composition have bit-identical masses
  // and the cut-off falls inside runs of ties (taken by lower index; target_sparsity: by query block, then group).
  for (int rule = 0; rule < 4; ++rule)
    for (int64_t n : {1, 6, 4}) {
      add(std::string("ties, ") + rule_name(SelectionRule(rule)) + " N=" + std::to_string(n), [&](MaskCase& c) {
        c.key_patterns = 3, c.N = n, c.tokens = 600, c.M = 32, c.q_heads = 2, c.batch = rule == 1 ? 2 : 1;
        c.sel.rule = SelectionRule(rule), c.sel.p = 0.5, c.sel.k = 7, c.sel.target_sparsity = 0.6;
        c.sel.threshold = 1.0 / double(c.shape().num_key_groups());
        if (n == 4) c.capacity = 9;  // the capacity cut inside ties too
      });
    }
  // Every group of a head ties (identical queries and keys): the order is (query block, group) alone. With target
  // 0.03 the budget runs out inside the last, partial query block (600 = 9 * 64 + 24).
  for (int rule : {3, 0, 1})
    add(std::string("all tied, ") + rule_name(SelectionRule(rule)), [&](MaskCase& c) {
      c.key_patterns = 1, c.query_patterns = 1, c.tokens = 600, c.M = 64, c.N = 5, c.q_heads = 2;
      c.sel.rule = SelectionRule(rule), c.sel.target_sparsity = 0.03, c.sel.p = 0.5, c.sel.k = 3;
      c.sel.keep_diagonal = rule != 3;
    });
  for (size_t i = 0; i < cases.size(); ++i) run_case(cases[i], test_seed() + 77 * i);
}

// A case, the GPU plan and what the test knows about it, for the rule-specific edge tests below.
struct Built {
  ColumnPlan plan;
  std::optional<ColumnPlan> window;
};
Built build_plan(const MaskCase& c, uint64_t seed) {
  const ColumnPlanShape s = c.shape();
  const Inputs in = make_inputs(c, seed);
  DeviceBuffer dq(in.q_bits.size() * 2), dk(in.k_bits.size() * 2);
  cuda_check(cudaMemcpy(dq.p, in.q_bits.data(), in.q_bits.size() * 2, cudaMemcpyHostToDevice), "cudaMemcpy");
  cuda_check(cudaMemcpy(dk.p, in.k_bits.data(), in.k_bits.size() * 2, cudaMemcpyHostToDevice), "cudaMemcpy");
  MaskCase plain = c;
  plain.bshd = false;
  DynamicMaskArgs a = make_args(plain, dq.p, dk.p);
  std::mt19937_64 rng(seed);
  Built b{ColumnPlan::from_rows(s, std::vector<std::vector<int32_t>>(s.num_rows())), std::nullopt};
  std::optional<DevicePlan> dwindow;
  if (c.window_density > 0) {
    b.window = random_window(s, c.window_density, rng);
    dwindow.emplace(s, b.window->max_row_length());
    dwindow->upload(b.window->to_fixed(b.window->max_row_length()));
    a.window = &dwindow->plan;
  }
  const int64_t ws = dynamic_mask_workspace_bytes(a, s, c.heads_per_pass);
  DeviceBuffer workspace{size_t(ws)};
  a.workspace = workspace.p, a.workspace_bytes = ws;
  DevicePlan out(s, c.capacity < 0 ? s.num_key_groups() : c.capacity);
  build_dynamic_column_plan_gpu(a, out.plan, nullptr);
  cuda_check(cudaDeviceSynchronize(), "build");
  b.plan = check_structure(out.download());
  return b;
}

TEST_F(DynamicMaskGpu, KeepEverythingAndNothing) {
  MaskCase c;
  c.name = "all";
  c.q_heads = 2, c.tokens = 777, c.M = 32, c.N = 5, c.sharpness = 0.5f;
  const int64_t ng = c.shape().num_key_groups();
  for (SelectionRule rule : {SelectionRule::top_p, SelectionRule::top_k, SelectionRule::threshold}) {
    for (double window : {0.0, 0.4}) {
      c.sel.rule = rule, c.sel.p = 1.0, c.sel.k = ng, c.sel.threshold = 0.0;
      c.window_density = window;
      const Built all = build_plan(c, test_seed() + 5);
      for (int64_t r = 0; r < c.shape().num_rows(); ++r) {
        const auto row = all.plan.row(r / all.plan.num_query_blocks(), r % all.plan.num_query_blocks());
        const int64_t eligible = all.window ? int64_t(all.window->row(r / all.plan.num_query_blocks(),
                                                                      r % all.plan.num_query_blocks()).size())
                                            : ng;
        ASSERT_EQ(int64_t(row.size()), eligible) << rule_name(rule) << " window " << window << " row " << r;
      }
    }
  }
  c.window_density = 0;
  c.sel.rule = SelectionRule::top_k, c.sel.k = 0, c.sel.keep_diagonal = false;
  EXPECT_EQ(build_plan(c, test_seed() + 6).plan.num_entries(), 0);
  c.sel.keep_diagonal = true;  // now exactly the diagonal
  const ColumnPlan diag = build_plan(c, test_seed() + 7).plan;
  for (int64_t qb = 0; qb < diag.num_query_blocks(); ++qb) {
    const int64_t first = qb * c.M, last = std::min(first + c.M, c.tokens) - 1;
    std::vector<int32_t> want;
    for (int64_t g = first / c.N; g <= last / c.N; ++g) want.push_back(int32_t(g));
    const auto row = diag.row(1, qb);
    EXPECT_EQ(std::vector<int32_t>(row.begin(), row.end()), want) << "block " << qb;
  }
}

TEST_F(DynamicMaskGpu, TextAlwaysKept) {
  MaskCase c;
  c.name = "text";
  c.tokens = 900, c.M = 64, c.N = 10, c.sharpness = 3.0f;
  c.sel.rule = SelectionRule::top_k, c.sel.k = 1, c.sel.always_keep_text = true, c.sel.text_len = 77;
  const ColumnPlan plan = build_plan(c, test_seed() + 11).plan;
  const int32_t first_text = int32_t((c.tokens - 77) / c.N);
  for (int64_t h = 0; h < c.q_heads; ++h)
    for (int64_t qb = 0; qb < plan.num_query_blocks(); ++qb) {
      const auto row = plan.row(h, qb);
      for (int32_t g = first_text; g < plan.num_key_groups(); ++g)
        EXPECT_TRUE(std::binary_search(row.begin(), row.end(), g)) << "head " << h << " block " << qb << " group " << g;
    }
}

// heads_per_pass changes only how much is resident: plans are identical, and identical run to run.
TEST_F(DynamicMaskGpu, DeterministicAcrossHeadsPerPass) {
  for (int rule = 0; rule < 4; ++rule) {
    MaskCase c;
    c.name = "passes";
    c.q_heads = 4, c.kv_heads = 2, c.batch = 2, c.tokens = 1500, c.M = 16, c.N = 3;
    c.sel.rule = SelectionRule(rule), c.sel.k = 20, c.sel.threshold = 0.002, c.sel.target_sparsity = 0.7;
    const ColumnPlan all = build_plan(c, test_seed() + 21).plan;
    EXPECT_EQ(build_plan(c, test_seed() + 21).plan, all) << rule_name(SelectionRule(rule)) << ": run to run";
    c.heads_per_pass = 1;
    EXPECT_EQ(build_plan(c, test_seed() + 21).plan, all) << rule_name(SelectionRule(rule)) << ": one head per pass";
  }
}

// No allocation, no synchronization: the build can be captured in a CUDA graph and replays give the same plan.
TEST_F(DynamicMaskGpu, CapturesInCudaGraph) {
  MaskCase c;
  c.q_heads = 4, c.kv_heads = 2, c.tokens = 1100, c.M = 64, c.N = 4;
  c.sel.rule = SelectionRule::target_sparsity, c.sel.target_sparsity = 0.75;
  const ColumnPlanShape s = c.shape();
  const Inputs in = make_inputs(c, test_seed() + 31);
  DeviceBuffer dq(in.q_bits.size() * 2), dk(in.k_bits.size() * 2);
  CUDA_OK(cudaMemcpy(dq.p, in.q_bits.data(), in.q_bits.size() * 2, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dk.p, in.k_bits.data(), in.k_bits.size() * 2, cudaMemcpyHostToDevice));
  DynamicMaskArgs a = make_args(c, dq.p, dk.p);
  const int64_t ws = dynamic_mask_workspace_bytes(a, s, 1);  // one head per pass: the multi-pass path
  DeviceBuffer workspace{size_t(ws)};
  a.workspace = workspace.p, a.workspace_bytes = ws;
  DevicePlan direct(s, s.num_key_groups()), graphed(s, s.num_key_groups());
  build_dynamic_column_plan_gpu(a, direct.plan, nullptr);
  CUDA_OK(cudaDeviceSynchronize());

  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  build_dynamic_column_plan_gpu(a, graphed.plan, stream);
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 2; ++i) {
    graphed.fill_garbage();
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    const FixedColumnPlan x = direct.download(), y = graphed.download();
    EXPECT_EQ(x.counts, y.counts) << "replay " << i;
    EXPECT_EQ(x.table, y.table) << "replay " << i;
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST_F(DynamicMaskGpu, RejectsBadArgumentsBeforeLaunching) {
  MaskCase c;
  DeviceBuffer dq(size_t(c.q_heads * c.tokens * c.head_dim) * 2), dk(size_t(c.tokens * c.head_dim) * 2);
  DynamicMaskArgs a = make_args(c, dq.p, dk.p);
  const ColumnPlanShape s = c.shape();
  DeviceBuffer workspace(size_t(dynamic_mask_workspace_bytes(a, s, 1)));
  a.workspace = workspace.p, a.workspace_bytes = dynamic_mask_workspace_bytes(a, s, 1) - 256;
  DevicePlan out(s, 4);
  try {
    build_dynamic_column_plan_gpu(a, out.plan, nullptr);
    FAIL() << "no ArgumentError";
  } catch (const ArgumentError& e) {
    EXPECT_EQ(e.argument(), "workspace") << e.what();
  }
  a.workspace_bytes += 256;
  a.head_dim = 96;
  try {
    build_dynamic_column_plan_gpu(a, out.plan, nullptr);
    FAIL() << "no ArgumentError";
  } catch (const ArgumentError& e) {
    EXPECT_EQ(e.argument(), "head_dim") << e.what();
  }
}

// The mean time of 3 calls of f on the default stream, after one warm-up call.
template <class F>
float time_ms(F&& f) {
  cudaEvent_t start, stop;
  cuda_check(cudaEventCreate(&start), "cudaEventCreate");
  cuda_check(cudaEventCreate(&stop), "cudaEventCreate");
  f();
  cuda_check(cudaEventRecord(start), "cudaEventRecord");
  const int reps = 3;
  for (int i = 0; i < reps; ++i) f();
  cuda_check(cudaEventRecord(stop), "cudaEventRecord");
  cuda_check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  cuda_check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / reps;
}

// hunyuan-720p (B=1, 24 heads, 115,200 tokens, D=128, M=128, 256 text tokens always kept): fresh random bf16 q and
// k on the device, and the case (rule and N set by the caller).
struct Hunyuan720 {
  static constexpr int64_t heads = 24, tokens = 115200, d = 128, M = 128, text = 256, elems = heads * tokens * d;
  DeviceBuffer dq{size_t(elems) * 2}, dk{size_t(elems) * 2};
  explicit Hunyuan720(uint64_t seed) {
    detail::fill_random_device(dq.p, elems, DType::bf16, seed, 1.0f, nullptr);
    detail::fill_random_device(dk.p, elems, DType::bf16, seed + 1, 1.0f, nullptr);
  }
  MaskCase mask_case(int64_t N, SelectionRule rule) const {
    MaskCase c;
    c.q_heads = c.kv_heads = heads, c.head_dim = d, c.tokens = tokens, c.M = M, c.N = N;
    c.sel.rule = rule, c.sel.p = 0.9, c.sel.target_sparsity = 0.7;
    c.sel.always_keep_text = true, c.sel.text_len = text;
    return c;
  }
};

// hunyuan-720p scale: the N=16 estimate's sampled rows against an fp64 computation on the host. (The builders'
// times: HunyuanScaleBuildersAgainstReplay.)
TEST_F(DynamicMaskGpu, HunyuanScaleSampledMasses) {
  const Hunyuan720 in(test_seed() + 41);
  const auto& dq = in.dq;
  const auto& dk = in.dk;
  const int64_t tokens = in.tokens, d = in.d, M = in.M;
  {
    const MaskCase c = in.mask_case(16, SelectionRule::top_k);
    const DynamicMaskArgs a = make_args(c, dq.p, dk.p);
    const ColumnPlanShape s = c.shape();
    const int64_t ng = s.num_key_groups();
    DeviceBuffer dmass(size_t(s.num_rows() * ng) * 4);
    DeviceBuffer workspace{size_t(dynamic_mask_workspace_bytes(a, s, 1))};
    DynamicMaskArgs aw = a;
    aw.workspace = workspace.p, aw.workspace_bytes = dynamic_mask_workspace_bytes(a, s, 1);
    estimate_column_mass_gpu(aw, s, dmass.as<float>(), nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<uint16_t> qh(static_cast<size_t>(tokens * d)), kh(static_cast<size_t>(tokens * d));
    const int64_t nq = s.num_query_blocks();
    for (int64_t h : {0, 13, 23}) {
      CUDA_OK(cudaMemcpy(kh.data(), dk.as<uint16_t>() + h * tokens * d, kh.size() * 2, cudaMemcpyDeviceToHost));
      CUDA_OK(cudaMemcpy(qh.data(), dq.as<uint16_t>() + h * tokens * d, size_t(tokens * d) * 2, cudaMemcpyDeviceToHost));
      for (int64_t qb : {int64_t{0}, int64_t{457}, nq - 1}) {
        std::vector<double> pooled(d);
        const int64_t rows = std::min(M, tokens - qb * M);
        for (int64_t col = 0; col < d; ++col) {
          float sum = 0.0f;
          for (int64_t i = qb * M; i < qb * M + rows; ++i) sum += detail::half_bits_to_float(qh[i * d + col], DType::bf16);
          pooled[col] =
              detail::half_bits_to_float(detail::float_to_half_bits(sum / float(rows), DType::bf16), DType::bf16);
        }
        std::vector<double> score(tokens);
        double mx = -INFINITY, z = 0;
        for (int64_t j = 0; j < tokens; ++j) {
          double dot = 0;
          for (int64_t col = 0; col < d; ++col) dot += pooled[col] * detail::half_bits_to_float(kh[j * d + col], DType::bf16);
          mx = std::max(mx, score[j] = dot / std::sqrt(double(d)));
        }
        for (double& x : score) z += (x = std::exp(x - mx));
        std::vector<float> got(ng);
        CUDA_OK(cudaMemcpy(got.data(), dmass.as<float>() + (h * nq + qb) * ng, ng * 4, cudaMemcpyDeviceToHost));
        double worst = 0;
        for (int64_t g = 0; g < ng; ++g) {
          double want = 0;
          for (int64_t j = g * 16; j < std::min((g + 1) * 16, tokens); ++j) want += score[j] / z;
          worst = std::max(worst, std::fabs(got[g] - want) / (want + 1e-12));
        }
        EXPECT_LT(worst, 1e-3) << "head " << h << " block " << qb;
      }
    }
  }
}

// Row (h, qb) of a per-row rule (top_k) as the GPU must build it from the row's masses (the replay above, one row).
std::vector<int32_t> replay_top_k_row(const ColumnPlanShape& s, const ColumnSelection& sel, const float* mass,
                                      int64_t h, int64_t qb, int64_t capacity) {
  const RowInfo info = row_info(s, sel, nullptr, h, qb);
  std::vector<uint32_t> keys;
  const std::vector<int32_t> order = priority_order(s, mass, info, false, keys);
  int64_t forced = 0;
  for (int32_t g : order) forced += info.forced[g];
  const int64_t n = forced + std::min<int64_t>(sel.k, int64_t(order.size()) - forced);
  std::vector<int32_t> row(order.begin(), order.begin() + std::min(n, capacity));
  std::sort(row.begin(), row.end());
  return row;
}

// hunyuan-720p (B=1, 24 heads, 115,200 tokens, D=128, M=128, 256 text tokens always kept) on fresh random inputs:
// the build time of each rule for N = 1, 8, 16, 64, the estimate alone (masses), and the plan against the GPU's
// semantics replayed on the host from the estimate's masses: whole heads for N >= 8 (a random one; target_sparsity
// also head 0), sampled rows for N = 1 (top_k). Prints "TIMING {json}" lines (tools/device_mask_builders.sh collects them).
TEST_F(DynamicMaskGpu, HunyuanScaleBuildersAgainstReplay) {
  const Hunyuan720 in(test_seed() + 51);
  const int64_t heads = in.heads, tokens = in.tokens, M = in.M, text = in.text;
  std::mt19937_64 rng(test_seed() + 720);
  struct Run {
    int64_t N;
    SelectionRule rule;
    int64_t heads_per_pass;
    bool check;
  };
  const Run runs[] = {{1, SelectionRule::top_k, 8, true},           {8, SelectionRule::top_k, 0, true},
                      {16, SelectionRule::top_k, 0, true},          {64, SelectionRule::top_k, 0, true},
                      {1, SelectionRule::target_sparsity, 8, false}, {8, SelectionRule::target_sparsity, 0, true},
                      {16, SelectionRule::target_sparsity, 0, true}, {64, SelectionRule::target_sparsity, 0, true},
                      {64, SelectionRule::top_p, 0, true}};
  float estimate_ms[65] = {};
  for (const Run& run : runs) {
    SCOPED_TRACE(std::string("N ") + std::to_string(run.N) + " " + rule_name(run.rule));
    MaskCase c = in.mask_case(run.N, run.rule);
    const ColumnPlanShape s = c.shape();
    const int64_t ng = s.num_key_groups(), nq = s.num_query_blocks();
    c.sel.k = ng * 3 / 10;  // top_k keeps 30% (+ diagonal and text): the 70% sparsity the target rule asks for
    const int64_t capacity =
        run.rule == SelectionRule::top_k ? std::min(ng, c.sel.k + M / run.N + 2 + text / run.N + 1) : ng;
    DynamicMaskArgs a = make_args(c, in.dq.p, in.dk.p);
    const int64_t ws = dynamic_mask_workspace_bytes(a, s, run.heads_per_pass);
    DeviceBuffer workspace{size_t(ws)};
    a.workspace = workspace.p, a.workspace_bytes = ws;
    DevicePlan out(s, capacity);
    build_dynamic_column_plan_gpu(a, out.plan, nullptr);  // into garbage (DevicePlan): every slot must be written
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<int32_t> counts(s.num_rows());
    CUDA_OK(cudaMemcpy(counts.data(), out.plan.counts, counts.size() * 4, cudaMemcpyDeviceToHost));
    double kept = 0;
    for (int32_t n : counts) kept += n;
    kept /= double(s.num_rows() * ng);

    if (run.check) {
      DeviceBuffer dmass(size_t(s.num_rows() * ng) * 4);
      estimate_column_mass_gpu(a, s, dmass.as<float>(), nullptr);
      CUDA_OK(cudaDeviceSynchronize());
      auto download_rows = [&](int64_t r0, int64_t n) {  // rows [r0, r0 + n) of the plan as a 1-head plan
        FixedColumnPlan f{ColumnPlanShape{tokens, 1, M, run.N}, capacity, std::vector<int32_t>(n * capacity),
                          std::vector<int32_t>(n)};
        cuda_check(cudaMemcpy(f.table.data(), out.plan.table + r0 * capacity, f.table.size() * 4,
                              cudaMemcpyDeviceToHost), "cudaMemcpy");
        cuda_check(cudaMemcpy(f.counts.data(), out.plan.counts + r0, n * 4, cudaMemcpyDeviceToHost), "cudaMemcpy");
        return f;
      };
      if (run.N == 1) {  // sampled rows of a per-row rule
        std::vector<float> row_mass(ng);
        int64_t bad = 0, checked = 0;
        for (int i = 0; i < 12; ++i) {
          const int64_t r = i == 0 ? 0 : i == 1 ? s.num_rows() - 1 : std::uniform_int_distribution<int64_t>(
                                                                           0, s.num_rows() - 1)(rng);
          CUDA_OK(cudaMemcpy(row_mass.data(), dmass.as<float>() + r * ng, ng * 4, cudaMemcpyDeviceToHost));
          const std::vector<int32_t> want = replay_top_k_row(s, c.sel, row_mass.data(), r / nq, r % nq, capacity);
          FixedColumnPlan f = download_rows(r, 1);
          std::vector<int32_t> expect = want;
          expect.resize(capacity, -1);
          ++checked;
          if (f.counts[0] != int32_t(want.size()) || f.table != expect) {
            if (bad++ < 3) ADD_FAILURE() << "row " << r << ": count " << f.counts[0] << ", replay " << want.size();
          }
        }
        EXPECT_EQ(bad, 0) << "of " << checked << " sampled rows";
      } else {  // whole heads (the per-head cut of target_sparsity needs every row): two for it, else one
        std::vector<int64_t> check_heads{std::uniform_int_distribution<int64_t>(1, heads - 1)(rng)};
        if (run.rule == SelectionRule::target_sparsity) check_heads.push_back(0);
        for (int64_t h : check_heads) {
          SCOPED_TRACE("head " + std::to_string(h));
          MaskCase one = c;
          one.q_heads = one.kv_heads = 1;
          std::vector<float> mass(size_t(nq * ng));
          CUDA_OK(cudaMemcpy(mass.data(), dmass.as<float>() + h * nq * ng, mass.size() * 4, cudaMemcpyDeviceToHost));
          // The rules' diagonal/text terms do not depend on the head: head h replays as a 1-head case.
          const ColumnPlan gpu = check_structure(download_rows(h * nq, nq));
          expect_replayed(gpu, replay_gpu_selection(one, mass, nullptr, capacity));
        }
      }
    }

    out.fill_garbage();
    const float build_ms = time_ms([&] { build_dynamic_column_plan_gpu(a, out.plan, nullptr); });
    if (estimate_ms[run.N] == 0) {  // the estimate alone (pool, statistics, masses of every head), once per N
      DeviceBuffer dmass(size_t(s.num_rows() * ng) * 4);
      estimate_ms[run.N] = time_ms([&] { estimate_column_mass_gpu(a, s, dmass.as<float>(), nullptr); });
    }
    std::printf("  N=%lld %s, %lld heads per pass (workspace %.2f GB): build %.2f ms (estimate alone %.2f ms), "
                "%.1f%% of groups kept\n",
                static_cast<long long>(run.N), rule_name(run.rule), static_cast<long long>(run.heads_per_pass),
                double(ws) / 1e9, build_ms, estimate_ms[run.N], 100.0 * kept);
    std::printf("TIMING {\"builder\": \"dynamic\", \"N\": %lld, \"rule\": \"%s\", \"build_ms\": %.4f, "
                "\"estimate_ms\": %.4f, \"kept\": %.4f, \"heads_per_pass\": %lld, \"checked\": %s}\n",
                static_cast<long long>(run.N), rule_name(run.rule), build_ms, estimate_ms[run.N], kept,
                static_cast<long long>(run.heads_per_pass), run.check ? "true" : "false");
  }
}

}  // namespace

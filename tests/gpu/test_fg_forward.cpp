// FG-Attn (fg.hpp) on the GPU: the fine-grained forward against the CPU reference on column plans (fp64) on fresh
// random inputs, its host-side argument checks, the device plan check and the synthetic GPU mask builders.
// Skips cleanly without a Hopper GPU. The seed comes from TILEATTN_TEST_SEED or std::random_device and is printed, so
// a failure can be replayed.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <iterator>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "sta_case.hpp"
#include "tileattn/column_plan.hpp"
#include "tileattn/detail/testing.hpp"
#include "tileattn/error.hpp"
#include "tileattn/fg.hpp"
#include "tileattn/reference.hpp"
#include "kernels/synthetic_mask_rule.hpp"  // the synthetic masks' definition, as the host reference

using namespace tileattn;
using namespace tileattn::testing;

namespace {

// ---- random plans ----

using Rng = std::mt19937_64;
double uniform(Rng& rng, double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }
int64_t pick(Rng& rng, int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }
bool coin(Rng& rng, double p) { return uniform(rng, 0.0, 1.0) < p; }

// Each (head, query block, key group) visited with probability `density`: 0 empties every row, 1 fills every row.
ColumnPlan random_plan(const ColumnPlanShape& s, double density, Rng& rng) {
  return build_column_plan(s, [&](int64_t, int64_t, int64_t) { return coin(rng, density); });
}

// Each row drawn on its own: empty, full, a single group, or each group with probability `density`.
// (build_column_plan asks for the groups of one row after another, in ascending order.)
ColumnPlan mixed_plan(const ColumnPlanShape& s, double density, Rng& rng) {
  int64_t kind = 0, single = 0;
  return build_column_plan(s, [&](int64_t, int64_t, int64_t g) {
    if (g == 0) kind = pick(rng, 0, 3), single = pick(rng, 0, s.num_key_groups() - 1);
    return kind == 0 ? false : kind == 1 ? true : kind == 2 ? g == single : coin(rng, density);
  });
}

// Every row visits exactly one random key group.
ColumnPlan single_group_plan(const ColumnPlanShape& s, Rng& rng) {
  std::vector<std::vector<int32_t>> rows(s.num_rows());
  for (auto& row : rows) row = {static_cast<int32_t>(pick(rng, 0, s.num_key_groups() - 1))};
  return ColumnPlan::from_rows(s, rows);
}

// M = 16: the 8 sub-blocks of each 128-row CTA visit disjoint key groups (sub-block j those with g % 8 == j), except
// the last, which visits none. The CTA computes the union, so every tile holds keys that each sub-block must mask.
ColumnPlan disjoint_sub_block_plan(int64_t tokens, int64_t heads, int64_t key_group) {
  return build_column_plan({tokens, heads, 16, key_group}, [](int64_t, int64_t qb, int64_t g) {
    const int64_t sub = qb % 8;
    return sub != 7 && g % 8 == sub;
  });
}

// "Video then text": video query blocks visit a random 30% of the video key groups plus every group holding text;
// query blocks holding text visit everything.
ColumnPlan video_text_plan(const ColumnPlanShape& s, int64_t video_tokens, Rng& rng) {
  return build_column_plan(s, [&](int64_t, int64_t qb, int64_t g) {
    const bool text_query = (qb + 1) * s.query_block > video_tokens, text_key = (g + 1) * s.key_group > video_tokens;
    return text_query || text_key || coin(rng, 0.3);
  });
}

// ---- device memory ----

// Device allocations freed together, also when an assertion returns early.
class DeviceBuffers {
 public:
  DeviceBuffers() = default;
  DeviceBuffers(const DeviceBuffers&) = delete;
  DeviceBuffers& operator=(const DeviceBuffers&) = delete;
  ~DeviceBuffers() {
    for (void* p : buffers_) cudaFree(p);
  }
  // At least 256 bytes, so that an empty array (a plan of capacity 0) still has an address. 256-byte aligned.
  void* alloc(int64_t bytes) {
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<int64_t>(bytes, 256)) != cudaSuccess) {
      ADD_FAILURE() << "cudaMalloc of " << bytes << " bytes: " << cudaGetErrorString(cudaGetLastError());
      return nullptr;
    }
    buffers_.push_back(p);
    return p;
  }
  template <class T>
  T* upload(const std::vector<T>& host) {
    T* p = static_cast<T*>(alloc(static_cast<int64_t>(host.size() * sizeof(T))));
    if (p != nullptr && !host.empty()) {
      EXPECT_EQ(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
    return p;
  }

 private:
  std::vector<void*> buffers_;
};

template <class T>
std::vector<T> download(const T* device, int64_t count) {
  std::vector<T> host(count);
  if (count > 0) {
    EXPECT_EQ(cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  }
  return host;
}

// An uninitialised device plan of `capacity` slots a row.
DeviceColumnPlan alloc_plan(const ColumnPlanShape& s, int64_t capacity, DeviceBuffers& buffers) {
  return {s, capacity, static_cast<int32_t*>(buffers.alloc(s.num_rows() * capacity * 4)),
          static_cast<int32_t*>(buffers.alloc(s.num_rows() * 4))};
}
DeviceColumnPlan upload_plan(const FixedColumnPlan& f, DeviceBuffers& buffers) {
  return {f.shape, f.capacity, buffers.upload(f.table), buffers.upload(f.counts)};
}
FixedColumnPlan download_plan(const DeviceColumnPlan& p) {
  const int64_t rows = p.shape.num_rows();
  return {p.shape, p.capacity, download(p.table, rows * p.capacity), download(p.counts, rows)};
}

// [heads, tokens, head_dim] contiguous (batch 1).
DeviceTensor bhsd(void* data, int64_t heads, int64_t tokens, int64_t head_dim) {
  return {data, heads * tokens * head_dim, tokens * head_dim, head_dim};
}

// Runs f and expects an ArgumentError naming one of `arguments`: the argument itself or a field of it ("plan.table"
// names "plan" and "table").
template <class F>
void expect_argument_error(F&& f, const std::vector<std::string>& arguments) {
  try {
    f();
    ADD_FAILURE() << "no ArgumentError, expected one naming " << arguments.front();
  } catch (const ArgumentError& e) {
    std::vector<std::string> parts;
    std::istringstream name(e.argument());
    for (std::string part; std::getline(name, part, '.');) parts.push_back(part);
    const bool named = std::any_of(arguments.begin(), arguments.end(), [&](const std::string& want) {
      return std::find(parts.begin(), parts.end(), want) != parts.end();
    });
    EXPECT_TRUE(named) << "expected an error naming " << arguments.front() << ", got: " << e.what();
  }
}
template <class F>
void expect_argument_error(F&& f, const char* argument) {
  expect_argument_error(std::forward<F>(f), std::vector<std::string>{argument});
}

// ---- forward cases ----

struct FgCase {
  std::string name;
  ColumnPlan plan;  // tokens, q_heads, M and N
  int64_t batch = 1;
  int64_t kv_heads = 0;  // 0: plan.heads() (no GQA)
  int64_t head_dim = 128;
  DType dtype = DType::bf16;
  bool bshd = false;  // tensors stored as [B, S, H, D] (strided views)
  float scale = 0.0f;
  int64_t spare_capacity = 0;  // the uploaded table holds this many slots more than the longest row

  int64_t q_heads() const { return plan.heads(); }
  int64_t kv() const { return kv_heads == 0 ? q_heads() : kv_heads; }
};

std::ostream& operator<<(std::ostream& os, const FgCase& c) {
  const ColumnPlanShape& s = c.plan.shape();
  return os << c.name << ": B=" << c.batch << " Hq=" << s.heads << " Hkv=" << c.kv() << " D=" << c.head_dim
            << " tokens " << s.tokens << " M=" << s.query_block << " N=" << s.key_group << " sparsity "
            << c.plan.sparsity().total << " capacity +" << c.spare_capacity
            << (c.dtype == DType::fp16 ? " fp16" : " bf16") << (c.bshd ? " bshd" : "") << " scale " << c.scale;
}

// sta_case.hpp's Problem lays out the tensors: FG positions need no geometry, so the case is a 1 x 1 x tokens video in
// natural order, which makes Problem's random inputs, BSHD views and downloads serve unchanged.
Case tensor_case(const FgCase& c) {
  Case t;
  t.name = c.name;
  t.batch = c.batch, t.q_heads = c.q_heads(), t.kv_heads = c.kv(), t.head_dim = c.head_dim;
  t.video = {1, 1, c.plan.tokens()};
  t.dtype = c.dtype, t.bshd = c.bshd, t.scale = c.scale;
  return t;
}

struct Errors {
  double rel_l2 = 0, lse_max_abs = 0;
  int64_t non_finite = 0;   // non-finite outputs, or a non-finite LSE of a query that sees keys
  int64_t blind = 0;        // queries that see no key ...
  int64_t blind_wrong = 0;  // ... whose output is not exactly 0 or whose LSE is not -inf
};

// Runs fg_forward on the case with `uploaded` as the device plan (normally the case's plan in fixed form) and compares
// out and lse with the fp64 CPU reference on the case's plan. Outputs and workspace are poisoned first.
void run_case(const FgCase& c, const FixedColumnPlan& uploaded, uint64_t seed, Errors& e) {
  const Case tc = tensor_case(c);
  Problem problem(tc, seed);
  const int64_t n = problem.tokens(), d = c.head_dim, hq = c.q_heads(), hkv = c.kv();
  const int64_t q_elems = problem.elems(hq), lse_elems = c.batch * hq * n;
  std::vector<float> q, k, v;
  const std::vector<uint16_t> qb = problem.random(hq, q), kb = problem.random(hkv, k), vb = problem.random(hkv, v);

  DeviceBuffers buffers;
  FgForwardArgs a;
  a.dtype = c.dtype, a.batch = c.batch, a.q_heads = hq, a.kv_heads = hkv, a.head_dim = d, a.scale = c.scale;
  a.q = problem.tensor(buffers.upload(problem.to_layout(qb, hq)), hq);
  a.k = problem.tensor(buffers.upload(problem.to_layout(kb, hkv)), hkv);
  a.v = problem.tensor(buffers.upload(problem.to_layout(vb, hkv)), hkv);
  a.out = problem.tensor(buffers.alloc(q_elems * 2), hq);
  a.lse = static_cast<float*>(buffers.alloc(lse_elems * 4));
  a.plan = upload_plan(uploaded, buffers);
  a.workspace_bytes = fg_forward_workspace_bytes(a);
  if (c.plan.query_block() == 128) {
    EXPECT_EQ(a.workspace_bytes, 0);
  }
  if (a.workspace_bytes > 0) {
    a.workspace = buffers.alloc(a.workspace_bytes);
    CUDA_OK(cudaMemset(a.workspace, 0xA5, a.workspace_bytes));  // stale content must not matter
  }
  detail::fill_pattern_device(a.out.data, q_elems, 0xFFFF, nullptr);  // NaN: every element must be written
  CUDA_OK(cudaMemset(a.lse, 0xFF, lse_elems * 4));
  fg_forward(a, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> out = problem.from_layout(download(static_cast<const uint16_t*>(a.out.data), q_elems), hq);
  const std::vector<float> lse = download(a.lse, lse_elems);

  std::vector<float> ref(q_elems), ref_lse(lse_elems);
  ReferenceOptions opts;
  opts.scale = c.scale;
  opts.accumulation = Accumulation::fp64;
  reference_attention_columns({c.batch, hq, hkv, n, d}, c.plan, q, k, v, ref, ref_lse, opts);
  const Comparison cmp = compare(out, ref);
  e.rel_l2 = cmp.rel_l2;
  e.non_finite = cmp.non_finite;
  for (int64_t row = 0; row < lse_elems; ++row) {
    if (ref_lse[row] == -INFINITY) {  // a query that sees no key: out exactly 0, lse -inf
      ++e.blind;
      const bool zero = std::all_of(out.begin() + row * d, out.begin() + (row + 1) * d, [](float x) { return x == 0; });
      if (!zero || lse[row] != -INFINITY) ++e.blind_wrong;
    } else if (!std::isfinite(lse[row])) {
      ++e.non_finite;
    } else {
      e.lse_max_abs = std::max(e.lse_max_abs, double(std::fabs(lse[row] - ref_lse[row])));
    }
  }
}

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_kernels_available()) GTEST_SKIP() << "no Hopper (sm_90) GPU: FG kernel tests skipped";
  }
};

class FgForwardGpu : public GpuTest {
 protected:
  void expect_matches_reference(const FgCase& c, uint64_t salt) {
    expect_matches_reference(c, c.plan.to_fixed(c.plan.max_row_length() + c.spare_capacity), salt);
  }
  // Same thresholds as the STA forward.
  void expect_matches_reference(const FgCase& c, const FixedColumnPlan& uploaded, uint64_t salt) {
    Errors e;
    run_case(c, uploaded, test_seed() * 1000003 + salt, e);
    if (HasFatalFailure()) return;
    const double tol = c.dtype == DType::bf16 ? 1e-2 : 2e-3;
    EXPECT_EQ(e.non_finite, 0) << c;
    EXPECT_EQ(e.blind_wrong, 0) << "of " << e.blind << " queries that see no key; " << c;
    EXPECT_LT(e.rel_l2, tol) << c;
    EXPECT_LT(e.lse_max_abs, 2e-3) << c;
    std::printf("  %-44s rel L2 %.2e, LSE max |err| %.2e, %lld blind queries\n", c.name.c_str(), e.rel_l2,
                e.lse_max_abs, static_cast<long long>(e.blind));
  }
};

// One case per feature: M 16/32/64/128; N 1/3/16/64/200 (N not dividing tokens, N > 128); tokens not a multiple of
// 128 (partial last CTA, query block and key group) and fewer than M; empty, full and single-group rows; disjoint
// sub-block lists; GQA 4:2 and 3:1; batch 2 with BSHD strides; head dim 64 fp16; custom scales; video + text; spare
// table capacity.
std::vector<FgCase> feature_cases(Rng& rng) {
  const int64_t video = 6 * 16 * 16, text = 77;
  std::vector<FgCase> cases;
  cases.push_back({.name = "M16 N1, 300 tokens", .plan = random_plan({300, 2, 16, 1}, 0.3, rng)});
  cases.push_back({.name = "M32 N3, 200 tokens, spare capacity",
                   .plan = random_plan({200, 2, 32, 3}, 0.5, rng),
                   .spare_capacity = 3});
  cases.push_back({.name = "M64 N16, 1000 tokens", .plan = random_plan({1000, 2, 64, 16}, 0.4, rng)});
  cases.push_back(
      {.name = "M128 N64, 777 tokens", .plan = random_plan({777, 2, 128, 64}, 0.5, rng), .spare_capacity = 1});
  cases.push_back({.name = "M128 N200 (group > 128 keys)", .plan = random_plan({1100, 2, 128, 200}, 0.5, rng)});
  cases.push_back({.name = "M16 N200 (group > 128 keys)", .plan = random_plan({901, 1, 16, 200}, 0.6, rng)});
  cases.push_back({.name = "M128 N1, 130 tokens (2-row last block)", .plan = random_plan({130, 2, 128, 1}, 0.5, rng)});
  cases.push_back({.name = "5 tokens < M64, N3", .plan = random_plan({5, 1, 64, 3}, 1.0, rng)});
  cases.push_back({.name = "all rows empty (capacity 0)", .plan = random_plan({500, 2, 64, 16}, 0.0, rng)});
  cases.push_back({.name = "all rows full, M32 N64", .plan = random_plan({600, 2, 32, 64}, 1.0, rng)});
  cases.push_back({.name = "all rows full, M128 N1", .plan = random_plan({400, 1, 128, 1}, 1.0, rng)});
  cases.push_back({.name = "one key per row, M16 N1", .plan = single_group_plan({257, 2, 16, 1}, rng)});
  cases.push_back(
      {.name = "one group per row, M64 N3", .plan = single_group_plan({700, 1, 64, 3}, rng), .spare_capacity = 2});
  cases.push_back({.name = "M16 disjoint sub-block lists, N3", .plan = disjoint_sub_block_plan(350, 2, 3)});
  cases.push_back({.name = "M16 disjoint sub-block lists, N64", .plan = disjoint_sub_block_plan(1200, 1, 64)});
  cases.push_back(
      {.name = "GQA 4:2, mixed rows, M32 N8", .plan = mixed_plan({700, 4, 32, 8}, 0.4, rng), .kv_heads = 2});
  cases.push_back(
      {.name = "GQA 3:1, mixed rows, M64 N5", .plan = mixed_plan({450, 3, 64, 5}, 0.5, rng), .kv_heads = 1});
  cases.push_back(
      {.name = "batch 2, BSHD, M32 N16", .plan = random_plan({520, 2, 32, 16}, 0.5, rng), .batch = 2, .bshd = true});
  cases.push_back({.name = "batch 2, BSHD, GQA 2:1, M16 D64 fp16",
                   .plan = mixed_plan({300, 2, 16, 7}, 0.5, rng),
                   .batch = 2,
                   .kv_heads = 1,
                   .head_dim = 64,
                   .dtype = DType::fp16,
                   .bshd = true});
  cases.push_back({.name = "D64 fp16, M16 N3",
                   .plan = random_plan({333, 2, 16, 3}, 0.5, rng),
                   .head_dim = 64,
                   .dtype = DType::fp16});
  cases.push_back({.name = "scale 0.05, fp16, M128 N16",
                   .plan = random_plan({256, 2, 128, 16}, 0.6, rng),
                   .dtype = DType::fp16,
                   .scale = 0.05f});
  cases.push_back({.name = "scale 0.3, M64 N2", .plan = random_plan({390, 2, 64, 2}, 0.4, rng), .scale = 0.3f});
  cases.push_back(
      {.name = "video 6x16x16 + text 77, M64 N16", .plan = video_text_plan({video + text, 2, 64, 16}, video, rng)});
  cases.push_back({.name = "video 6x16x16 + text 77, M16 N1",
                   .plan = video_text_plan({video + text, 1, 16, 1}, video, rng),
                   .spare_capacity = 5});
  return cases;
}

// A random case: tokens 1..1500, any M, N in {1 .. 300}, empty / full / Bernoulli / mixed rows, GQA, batch 1-2,
// bf16/fp16, D 64/128, BSHD strides, custom scale, spare capacity.
FgCase random_case(Rng& rng, const std::string& name) {
  const int64_t key_groups[] = {1, 2, 3, 5, 8, 16, 32, 64, 100, 128, 300};
  const int64_t kv = pick(rng, 1, 2), q_heads = kv * pick(rng, 1, 3);
  const ColumnPlanShape s{pick(rng, 1, 1500), q_heads, int64_t{16} << pick(rng, 0, 3), key_groups[pick(rng, 0, 10)]};
  const int64_t style = pick(rng, 0, 5);
  const double density = style == 0 ? 0.0 : style == 1 ? 1.0 : uniform(rng, 0.0, 1.0);
  FgCase c{.name = name, .plan = style >= 4 ? mixed_plan(s, density, rng) : random_plan(s, density, rng)};
  c.batch = pick(rng, 1, 2);
  c.kv_heads = kv;
  c.head_dim = pick(rng, 0, 1) ? 128 : 64;
  c.dtype = pick(rng, 0, 3) ? DType::bf16 : DType::fp16;
  c.bshd = pick(rng, 0, 3) == 0;
  c.scale = pick(rng, 0, 3) == 0 ? static_cast<float>(uniform(rng, 0.02, 0.2)) : 0.0f;
  c.spare_capacity = pick(rng, 0, 2) == 0 ? pick(rng, 1, 20) : 0;
  return c;
}

TEST_F(FgForwardGpu, FeatureCases) {
  Rng rng(test_seed());
  const std::vector<FgCase> cases = feature_cases(rng);
  for (size_t i = 0; i < cases.size(); ++i) expect_matches_reference(cases[i], i);
}

// 16 random cases (random_case), seeded from the test seed.
TEST_F(FgForwardGpu, RandomizedShapes) {
  Rng rng(test_seed() + 1);
  for (int trial = 0; trial < 16; ++trial)
    expect_matches_reference(random_case(rng, "random #" + std::to_string(trial)), 100 + trial);
}

// fg.hpp: the kernel clamps counts to [0, capacity] and skips group indices outside [0, num_key_groups). A count
// above the capacity reads the row's capacity slots (the unused ones hold -1), a negative count is an empty row, and
// indices past the last group or negative are skipped: the result is the reference on the plan without them.
TEST_F(FgForwardGpu, MalformedPlanIsClampedAndSkipped) {
  Rng rng(test_seed() + 2);
  for (int64_t M : {128, 16}) {
    const ColumnPlanShape s{400, 2, M, 4};
    const int32_t groups = static_cast<int32_t>(s.num_key_groups());
    std::vector<std::vector<int32_t>> rows(s.num_rows());
    for (auto& row : rows)
      for (int32_t g = 0; g < groups; ++g)
        if (coin(rng, 0.3) || g == 0) row.push_back(g);
    const ColumnPlan valid = ColumnPlan::from_rows(s, rows);
    FixedColumnPlan bad = valid.to_fixed(valid.max_row_length() + 4);
    const int64_t cap = bad.capacity;
    bad.counts[0] = static_cast<int32_t>(cap + 50);  // clamped to the capacity
    bad.counts[1] = -3;                              // clamped to 0
    rows[1].clear();
    bad.table[2 * cap + bad.counts[2]++] = groups + 7;  // past the last group, at the end of the row
    for (int64_t slot = bad.counts[3]++; slot > 0; --slot) bad.table[3 * cap + slot] = bad.table[3 * cap + slot - 1];
    bad.table[3 * cap] = -5;  // negative, at the start of the row
    const FgCase c{.name = "malformed plan, M" + std::to_string(M), .plan = ColumnPlan::from_rows(s, rows)};
    expect_matches_reference(c, bad, 200 + M);
  }
}

// A plan built on the GPU (fg.hpp's synthetic masks), downloaded and validated (from_fixed throws on a bad table).
ColumnPlan synthetic_plan(const ColumnPlanShape& s, int64_t capacity, const SyntheticMaskOptions& o) {
  DeviceBuffers buffers;
  const DeviceColumnPlan plan = alloc_plan(s, capacity, buffers);
  // Poisoned: every count must be written (0x7F7F7F7F exceeds any capacity), unused slots may stay as they are.
  EXPECT_EQ(cudaMemset(plan.table, 0x7F, s.num_rows() * capacity * 4), cudaSuccess);
  EXPECT_EQ(cudaMemset(plan.counts, 0x7F, s.num_rows() * 4), cudaSuccess);
  build_synthetic_column_plan(plan, o, nullptr);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return ColumnPlan::from_fixed(download_plan(plan));
}

// Masks built on the GPU drive the forward as they would in a benchmark: random M16 N8 and local video + text M64 N16.
TEST_F(FgForwardGpu, SyntheticPlans) {
  const ColumnPlanShape random_shape{1000, 2, 16, 8}, local_shape{6 * 16 * 16 + 77, 2, 64, 16};
  const SyntheticMaskOptions random{.kind = SyntheticMask::random, .sparsity = 0.7, .seed = test_seed()};
  const SyntheticMaskOptions local{
      .kind = SyntheticMask::local, .sparsity = 0.8, .seed = test_seed(), .video = {6, 16, 16}, .text_len = 77};
  const FgCase cases[] = {{.name = "synthetic random 70%, M16 N8",
                           .plan = synthetic_plan(random_shape, random_shape.num_key_groups(), random)},
                          {.name = "synthetic local 80%, video + text, M64 N16",
                           .plan = synthetic_plan(local_shape, local_shape.num_key_groups(), local),
                           .spare_capacity = 4}};
  for (size_t i = 0; i < std::size(cases); ++i) expect_matches_reference(cases[i], 300 + i);
}

// Planning and the forward allocate nothing and never synchronise: a synthetic mask build plus the forward (M = 32,
// so with the merge pass and its workspace; no LSE) captures in a CUDA graph, and replays give the direct call's
// output bit for bit.
TEST_F(FgForwardGpu, CapturesInCudaGraph) {
  const ColumnPlanShape s{6 * 16 * 16 + 77, 2, 32, 8};
  const int64_t d = 128, n = s.tokens, elems = s.heads * n * d;
  DeviceBuffers buffers;
  void* direct = buffers.alloc(elems * 2);
  void* graphed = buffers.alloc(elems * 2);
  FgForwardArgs a;
  a.q_heads = a.kv_heads = s.heads, a.head_dim = d;
  for (auto [t, salt] : {std::pair{&a.q, 1}, {&a.k, 2}, {&a.v, 3}}) {
    *t = bhsd(buffers.alloc(elems * 2), s.heads, n, d);
    detail::fill_random_device(t->data, elems, DType::bf16, test_seed() + salt, 1.0f, nullptr);
  }
  a.plan = alloc_plan(s, s.num_key_groups(), buffers);
  a.workspace_bytes = fg_forward_workspace_bytes(a);
  a.workspace = buffers.alloc(a.workspace_bytes);
  const SyntheticMaskOptions mask{
      .kind = SyntheticMask::local, .sparsity = 0.8, .seed = test_seed(), .video = {6, 16, 16}, .text_len = 77};
  a.out = bhsd(direct, s.heads, n, d);
  build_synthetic_column_plan(a.plan, mask, nullptr);
  fg_forward(a, nullptr);
  CUDA_OK(cudaMemset(a.plan.counts, 0, s.num_rows() * 4));  // the graph must rebuild the plan
  detail::fill_pattern_device(graphed, elems, 0xFFFF, nullptr);
  CUDA_OK(cudaDeviceSynchronize());

  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  a.out = bhsd(graphed, s.heads, n, d);
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  build_synthetic_column_plan(a.plan, mask, stream);
  fg_forward(a, stream);
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 2; ++i) CUDA_OK(cudaGraphLaunch(exec, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  EXPECT_EQ(download(static_cast<const uint16_t*>(direct), elems),
            download(static_cast<const uint16_t*>(graphed), elems));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// ---- argument checks (on the host, before anything is launched) ----

// A small valid call: 256 tokens, 2 heads, full rows of N = 16, M = query_block. Buffers are four times larger than
// needed, so that a bad argument the host check misses cannot make the launch read out of bounds.
struct ValidCall {
  DeviceBuffers buffers;
  FgForwardArgs args;

  explicit ValidCall(int64_t query_block) {
    const int64_t n = 256, heads = 2, d = 128, elems = heads * n * d;
    const ColumnPlan plan =
        build_column_plan({n, heads, query_block, 16}, [](int64_t, int64_t, int64_t) { return true; });
    args.q_heads = args.kv_heads = heads, args.head_dim = d;
    for (DeviceTensor* t : {&args.q, &args.k, &args.v, &args.out}) {
      *t = bhsd(buffers.alloc(4 * elems * 2), heads, n, d);
      detail::fill_random_device(t->data, elems, DType::bf16, test_seed(), 1.0f, nullptr);
    }
    args.lse = static_cast<float*>(buffers.alloc(4 * heads * n * 4));
    args.plan = upload_plan(plan.to_fixed(), buffers);
    args.workspace_bytes = fg_forward_workspace_bytes(args);
    if (args.workspace_bytes > 0) args.workspace = buffers.alloc(args.workspace_bytes);
  }
};

class FgValidationGpu : public GpuTest {};

TEST_F(FgValidationGpu, RejectsBadArguments) {
  ValidCall call(32);
  ASSERT_GT(call.args.workspace_bytes, 0);
  EXPECT_NO_THROW(fg_forward(call.args, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  struct Bad {
    const char* what;
    std::vector<std::string> arguments;  // any of them
    std::function<void(FgForwardArgs&)> mutate;
  };
  const Bad bad[] = {
      {"plan.table null", {"plan", "table"}, [](FgForwardArgs& a) { a.plan.table = nullptr; }},
      {"plan.counts null", {"plan", "counts"}, [](FgForwardArgs& a) { a.plan.counts = nullptr; }},
      {"plan.shape.heads 1 != q_heads 2", {"plan"}, [](FgForwardArgs& a) { a.plan.shape.heads = 1; }},
      {"plan.capacity -1", {"capacity"}, [](FgForwardArgs& a) { a.plan.capacity = -1; }},
      {"plan.shape.query_block 48", {"query_block"}, [](FgForwardArgs& a) { a.plan.shape.query_block = 48; }},
      {"head_dim 96", {"head_dim"}, [](FgForwardArgs& a) { a.head_dim = 96; }},
      {"kv_heads 3 of q_heads 2", {"kv_heads"}, [](FgForwardArgs& a) { a.kv_heads = 3; }},
      {"q 8 bytes off 16-byte alignment", {"q"}, [](FgForwardArgs& a) { a.q.data = static_cast<char*>(a.q.data) + 8; }},
      {"q token_stride 132 (not a multiple of 8)", {"q"}, [](FgForwardArgs& a) { a.q.token_stride = 132; }},
      {"workspace null with M = 32", {"workspace"}, [](FgForwardArgs& a) { a.workspace = nullptr; }},
      {"workspace one byte short", {"workspace"}, [](FgForwardArgs& a) { --a.workspace_bytes; }},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.what);
    FgForwardArgs a = call.args;
    b.mutate(a);
    expect_argument_error([&] { fg_forward(a, nullptr); }, b.arguments);
  }
  CUDA_OK(cudaDeviceSynchronize());
}

// M = 128 needs no merged plan: no workspace, and none is asked for.
TEST_F(FgValidationGpu, NoWorkspaceForFullQueryBlocks) {
  ValidCall call(128);
  EXPECT_EQ(call.args.workspace_bytes, 0);
  EXPECT_EQ(call.args.workspace, nullptr);
  EXPECT_NO_THROW(fg_forward(call.args, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
}

// ---- the device plan check ----

class FgPlanGpu : public GpuTest {};

// check_device_column_plan accepts a good plan and names "counts" or "table" as ColumnPlan::from_fixed does.
TEST_F(FgPlanGpu, CheckDeviceColumnPlan) {
  const ColumnPlanShape s{300, 2, 32, 4};  // 10 query blocks, 75 key groups: every row lists 37 or 38
  const ColumnPlan plan = build_column_plan(s, [](int64_t h, int64_t qb, int64_t g) { return (h + qb + g) % 2 == 0; });
  const FixedColumnPlan good = plan.to_fixed(plan.max_row_length() + 2);
  const int64_t cap = good.capacity;
  {
    DeviceBuffers buffers;
    EXPECT_NO_THROW(check_device_column_plan(upload_plan(good, buffers), nullptr));
  }
  const auto expect_rejected = [&](const char* what, const char* argument,
                                   const std::function<void(FixedColumnPlan&)>& edit) {
    SCOPED_TRACE(what);
    FixedColumnPlan f = good;
    edit(f);
    DeviceBuffers buffers;
    const DeviceColumnPlan d = upload_plan(f, buffers);
    expect_argument_error([&] { check_device_column_plan(d, nullptr); }, argument);
  };
  expect_rejected("count > capacity", "counts",
                  [&](FixedColumnPlan& f) { f.counts[1] = static_cast<int32_t>(cap + 1); });
  expect_rejected("negative count", "counts", [](FixedColumnPlan& f) { f.counts[2] = -1; });
  expect_rejected("descending row", "table", [](FixedColumnPlan& f) { std::swap(f.table[0], f.table[1]); });
  expect_rejected("repeated group", "table", [&](FixedColumnPlan& f) { f.table[3 * cap + 1] = f.table[3 * cap]; });
  expect_rejected("group past the last", "table", [&](FixedColumnPlan& f) {
    f.table[4 * cap + f.counts[4] - 1] = static_cast<int32_t>(s.num_key_groups());
  });
  expect_rejected("negative group", "table", [&](FixedColumnPlan& f) { f.table[5 * cap] = -1; });
}

// ---- synthetic masks ----

class FgSyntheticGpu : public GpuTest {};

// The groups of query block qb's own rows.
std::vector<int32_t> diagonal_groups(const ColumnPlanShape& s, int64_t qb) {
  const int64_t first = qb * s.query_block, last = first + s.query_block_size(qb) - 1;
  std::vector<int32_t> groups;
  for (int64_t g = first / s.key_group; g <= last / s.key_group; ++g) groups.push_back(static_cast<int32_t>(g));
  return groups;
}

// Counts the rows of `plan` missing a group of their own rows.
int64_t rows_missing_diagonal(const ColumnPlan& plan) {
  int64_t missing = 0;
  for (int64_t h = 0; h < plan.heads(); ++h)
    for (int64_t qb = 0; qb < plan.num_query_blocks(); ++qb) {
      const auto row = plan.row(h, qb);
      for (int32_t g : diagonal_groups(plan.shape(), qb)) missing += !std::binary_search(row.begin(), row.end(), g);
    }
  return missing;
}

bool same_rows(const ColumnPlan& plan, int64_t head_a, int64_t head_b) {
  for (int64_t qb = 0; qb < plan.num_query_blocks(); ++qb) {
    const auto a = plan.row(head_a, qb), b = plan.row(head_b, qb);
    if (!std::equal(a.begin(), a.end(), b.begin(), b.end())) return false;
  }
  return true;
}

// random: each (row, group) kept with probability 1 - sparsity, independently per head.
TEST_F(FgSyntheticGpu, RandomMaskKeepsTheRequestedFraction) {
  for (int64_t N : {1, 16})
    for (double sparsity : {0.0, 0.5, 0.9}) {
      SCOPED_TRACE("N " + std::to_string(N) + ", sparsity " + std::to_string(sparsity));
      const ColumnPlanShape s{3000, 2, 64, N};
      const SyntheticMaskOptions o{
          .kind = SyntheticMask::random, .sparsity = sparsity, .seed = test_seed(), .keep_diagonal = false};
      const ColumnPlan plan = synthetic_plan(s, s.num_key_groups(), o);
      const double got = plan.sparsity().total;
      EXPECT_NEAR(got, sparsity, 0.03);
      if (sparsity == 0.0) {  // probability 1: every group
        EXPECT_EQ(got, 0.0);
      }
      if (sparsity > 0.0) {
        EXPECT_FALSE(same_rows(plan, 0, 1)) << "the heads drew the same rows";
      }
    }
}

// The table is a function of the options: the same seed gives the same plan, another seed another plan.
TEST_F(FgSyntheticGpu, SameSeedSameTable) {
  const ColumnPlanShape s{6 * 16 * 16 + 77, 2, 32, 4};
  for (SyntheticMask kind : {SyntheticMask::random, SyntheticMask::local}) {
    SCOPED_TRACE(kind == SyntheticMask::random ? "random" : "local");
    SyntheticMaskOptions o{.kind = kind, .sparsity = 0.6, .seed = test_seed(), .video = {6, 16, 16}, .text_len = 77};
    const ColumnPlan first = synthetic_plan(s, s.num_key_groups(), o);
    EXPECT_EQ(synthetic_plan(s, s.num_key_groups(), o), first);
    o.seed += 1;
    if (kind == SyntheticMask::random) {
      EXPECT_NE(synthetic_plan(s, s.num_key_groups(), o), first);
    }
  }
}

// A row that would exceed the capacity keeps its first capacity groups (without keep_diagonal, whose interplay with
// the truncation fg.hpp leaves open).
TEST_F(FgSyntheticGpu, LongRowsKeepTheirFirstGroups) {
  const ColumnPlanShape s{2000, 2, 64, 4};
  const SyntheticMaskOptions o{
      .kind = SyntheticMask::random, .sparsity = 0.5, .seed = test_seed(), .keep_diagonal = false};
  const ColumnPlan full = synthetic_plan(s, s.num_key_groups(), o);
  const int64_t capacity = 7;
  const ColumnPlan cut = synthetic_plan(s, capacity, o);
  for (int64_t h = 0; h < s.heads; ++h)
    for (int64_t qb = 0; qb < s.num_query_blocks(); ++qb) {
      const auto want = full.row(h, qb).first(std::min<size_t>(capacity, full.row(h, qb).size()));
      const auto got = cut.row(h, qb);
      ASSERT_TRUE(std::equal(got.begin(), got.end(), want.begin(), want.end())) << "head " << h << " block " << qb;
    }
}

// keep_diagonal keeps the groups overlapping each query block's own rows, however sparse the mask.
TEST_F(FgSyntheticGpu, KeepDiagonal) {
  const ColumnPlanShape s{6 * 16 * 16 + 77, 2, 64, 5};
  for (SyntheticMask kind : {SyntheticMask::random, SyntheticMask::local}) {
    SCOPED_TRACE(kind == SyntheticMask::random ? "random" : "local");
    const SyntheticMaskOptions o{.kind = kind,
                                 .sparsity = 0.99,
                                 .seed = test_seed(),
                                 .video = {6, 16, 16},
                                 .text_len = 77,
                                 .keep_diagonal = true};
    EXPECT_EQ(rows_missing_diagonal(synthetic_plan(s, s.num_key_groups(), o)), 0);
  }
}

// Checks a local-kind plan against fg.hpp's rule, leaving open what the header leaves open (how the box side and
// the block's centre round). Query blocks of text visit every group. Video query blocks visit every all-text group,
// (keep_diagonal) the groups of their own rows, and otherwise only groups holding a video token in the largest box
// the rule allows: per axis of extent L, a box of side w <= ceil(f L) (f = (1 - sparsity)^(1/3)) inside [0, L) that
// holds the block's centre (a point of the bounding box of the block's tokens), give or take one for rounding.
// Needs video tokens to be a multiple of M, so that no query block holds both video and text.
void expect_local_rule(const ColumnPlan& plan, const SyntheticMaskOptions& o) {
  const ColumnPlanShape& s = plan.shape();
  const VideoGeometry geo(o.video);
  const int64_t video = o.video.volume(), n = s.tokens, N = s.key_group;
  ASSERT_EQ(video % s.query_block, 0);
  const double f = std::cbrt(1.0 - o.sparsity);
  int64_t violations = 0;
  std::string first_violation;
  for (int64_t h = 0; h < s.heads; ++h)
    for (int64_t qb = 0; qb < s.num_query_blocks(); ++qb) {
      const auto row = plan.row(h, qb);
      const auto expect_kept = [&](bool ok, int64_t g, const char* what) {
        if (!ok && violations++ == 0)
          first_violation = "head " + std::to_string(h) + ", query block " + std::to_string(qb) + ": group " +
                            std::to_string(g) + " " + what;
      };
      const auto kept = [&](int64_t g) { return std::binary_search(row.begin(), row.end(), static_cast<int32_t>(g)); };
      const int64_t first = qb * s.query_block, last = first + s.query_block_size(qb) - 1;
      if (first >= video) {
        for (int64_t g = 0; g < s.num_key_groups(); ++g) expect_kept(kept(g), g, "missing from a text query block");
        continue;
      }
      Extent3 cmin{INT64_MAX, INT64_MAX, INT64_MAX}, cmax{-1, -1, -1};  // the block's bounding box
      for (int64_t i = first; i <= last; ++i) {
        const Extent3 c = geo.token_coord(i);
        cmin = {std::min(cmin.t, c.t), std::min(cmin.h, c.h), std::min(cmin.w, c.w)};
        cmax = {std::max(cmax.t, c.t), std::max(cmax.h, c.h), std::max(cmax.w, c.w)};
      }
      int64_t lo[3], hi[3];  // the largest box the rule allows
      for (int axis = 0; axis < 3; ++axis) {
        const int64_t L = o.video[axis], w = std::min<int64_t>(L, static_cast<int64_t>(std::ceil(f * L + 1e-6)));
        lo[axis] = std::clamp<int64_t>(cmin[axis] - (w + 1) / 2 - 1, 0, L - w);
        hi[axis] = std::clamp<int64_t>(cmax[axis] + (w + 1) / 2, w - 1, L - 1);
      }
      for (int64_t g = 0; g < s.num_key_groups(); ++g) {
        const int64_t g0 = g * N, g1 = std::min(g0 + N, n) - 1;
        if (g0 >= video) {
          expect_kept(kept(g), g, "(text) missing");
        } else if (o.keep_diagonal && g0 <= last && g1 >= first) {
          expect_kept(kept(g), g, "(diagonal) missing");
        } else if (kept(g) && g1 < video) {  // a group holding text may be kept as text
          bool inside = false;
          for (int64_t j = g0; j <= g1 && !inside; ++j) {
            const Extent3 c = geo.token_coord(j);
            inside = c.t >= lo[0] && c.t <= hi[0] && c.h >= lo[1] && c.h <= hi[1] && c.w >= lo[2] && c.w <= hi[2];
          }
          expect_kept(inside, g, "kept outside the box");
        }
      }
    }
  EXPECT_EQ(violations, 0) << first_violation;
}

// local: boxes around each video query block's centre, every text group, text query blocks see everything.
TEST_F(FgSyntheticGpu, LocalMaskFollowsTheBoxRule) {
  const Extent3 video{8, 16, 32};  // 4096 tokens: a multiple of every M, and M16/M32 blocks stay in one row
  const int64_t text = 77, tokens = video.volume() + text;
  for (int64_t M : {16, 128})
    for (int64_t N : {1, 5, 16})
      for (bool keep_diagonal : {true, false}) {
        SCOPED_TRACE("M " + std::to_string(M) + ", N " + std::to_string(N) + (keep_diagonal ? ", diagonal" : ""));
        const ColumnPlanShape s{tokens, 2, M, N};
        const SyntheticMaskOptions o{.kind = SyntheticMask::local,
                                     .sparsity = 0.875,
                                     .seed = test_seed(),
                                     .video = video,
                                     .text_len = text,
                                     .keep_diagonal = keep_diagonal};
        const ColumnPlan plan = synthetic_plan(s, s.num_key_groups(), o);
        expect_local_rule(plan, o);
        if (keep_diagonal) {
          EXPECT_EQ(rows_missing_diagonal(plan), 0);
        }
        // Box of half the video's sides (1/8 of it) plus text: 0.84 at N = 1; coarser groups keep more.
        if (N == 1) {
          EXPECT_NEAR(plan.sparsity().total, o.sparsity, 0.1);
        }
      }
}

// The options' documented ranges: sparsity in [0, 1), video + text = the plan's tokens for local masks.
TEST_F(FgSyntheticGpu, RejectsBadOptions) {
  const ColumnPlanShape s{6 * 16 * 16 + 77, 1, 64, 16};
  DeviceBuffers buffers;
  const DeviceColumnPlan plan = alloc_plan(s, s.num_key_groups(), buffers);
  SyntheticMaskOptions o{.kind = SyntheticMask::local, .sparsity = 0.5, .video = {6, 16, 16}, .text_len = 77};
  EXPECT_NO_THROW(build_synthetic_column_plan(plan, o, nullptr));
  for (double sparsity : {1.0, -0.1}) {
    SyntheticMaskOptions bad = o;
    bad.sparsity = sparsity;
    expect_argument_error([&] { build_synthetic_column_plan(plan, bad, nullptr); }, "sparsity");
  }
  SyntheticMaskOptions bad = o;
  bad.text_len = 76;
  expect_argument_error([&] { build_synthetic_column_plan(plan, bad, nullptr); }, {"video", "text_len"});
  CUDA_OK(cudaDeviceSynchronize());
}

// ---- synthetic masks against their definition ----

// Row (h, qb) by the definition (SyntheticRule::keeps, group by group), cut to its first `capacity` groups.
std::vector<int32_t> defined_row(const kernels::SyntheticRule& r, int64_t h, int64_t qb, int64_t capacity) {
  const kernels::SyntheticRule::Row row = r.row(qb);
  std::vector<int32_t> out;
  for (int64_t g = 0; g < r.groups() && static_cast<int64_t>(out.size()) < capacity; ++g)
    if (r.keeps(h, row, qb, g)) out.push_back(static_cast<int32_t>(g));
  return out;
}

// Rows `rows` of the downloaded table against the definition: the count, the groups, -1 in every unused slot.
void expect_rows_defined(const kernels::SyntheticRule& rule, const DeviceColumnPlan& plan,
                         const std::vector<int64_t>& rows) {
  const int64_t nq = plan.shape.num_query_blocks(), cap = plan.capacity;
  int64_t bad = 0;
  for (int64_t r : rows) {
    const std::vector<int32_t> want = defined_row(rule, r / nq, r % nq, cap);
    const std::vector<int32_t> slots = download(plan.table + r * cap, cap);
    const int32_t count = download(plan.counts + r, 1)[0];
    std::vector<int32_t> expect = want;
    expect.resize(cap, -1);
    if (count != static_cast<int32_t>(want.size()) || slots != expect) {
      if (bad++ < 3) {
        size_t i = 0;
        while (i < slots.size() && slots[i] == expect[i]) ++i;
        ADD_FAILURE() << "row " << r << " (head " << r / nq << ", block " << r % nq << "): count " << count
                      << ", defined " << want.size() << "; first differing slot " << i;
      }
    }
  }
  EXPECT_EQ(bad, 0) << "of " << rows.size() << " rows";
}

// Every row of GPU-built plans equals the definition on random shapes, kinds, options and capacities (the local
// builder writes runs from the box directly; the definition scans each group's positions).
TEST_F(FgSyntheticGpu, EqualsTheHostDefinition) {
  Rng rng(test_seed() + 17);
  for (int trial = 0; trial < 40; ++trial) {
    const SyntheticMask kind = trial % 2 == 0 ? SyntheticMask::local : SyntheticMask::random;
    const Extent3 video{pick(rng, 1, 6), pick(rng, 1, 20), pick(rng, 1, 24)};
    const int64_t text = coin(rng, 0.3) ? 0 : pick(rng, 1, 90);
    const ColumnPlanShape s{video.volume() + text, pick(rng, 1, 3), int64_t{16} << pick(rng, 0, 3), pick(rng, 1, 33)};
    const SyntheticMaskOptions o{.kind = kind,
                                 .sparsity = coin(rng, 0.1) ? 0.0 : uniform(rng, 0.0, 0.99),
                                 .seed = test_seed() + uint64_t(trial),
                                 .video = video,
                                 .text_len = text,
                                 .keep_diagonal = coin(rng, 0.5)};
    const int64_t ng = s.num_key_groups(), capacity = coin(rng, 0.5) ? ng : pick(rng, 0, ng);
    SCOPED_TRACE(std::string(kind == SyntheticMask::local ? "local" : "random") + " video " + to_string(video) +
                 " text " + std::to_string(text) + " heads " + std::to_string(s.heads) + " M " +
                 std::to_string(s.query_block) + " N " + std::to_string(s.key_group) + " sparsity " +
                 std::to_string(o.sparsity) + " capacity " + std::to_string(capacity) +
                 (o.keep_diagonal ? " diagonal" : ""));
    DeviceBuffers buffers;
    const DeviceColumnPlan plan = alloc_plan(s, capacity, buffers);
    ASSERT_NE(plan.table, nullptr);
    CUDA_OK(cudaMemset(plan.table, 0x7F, s.num_rows() * capacity * 4));
    CUDA_OK(cudaMemset(plan.counts, 0x7F, s.num_rows() * 4));
    build_synthetic_column_plan(plan, o, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<int64_t> rows(s.num_rows());
    for (int64_t r = 0; r < s.num_rows(); ++r) rows[r] = r;
    expect_rows_defined(kernels::make_synthetic_rule(s, o), plan, rows);
  }
}

// hunyuan-720p (24 heads, 30 x 48 x 80 = 115,200 tokens, M = 128, capacity = every group): the build time of each
// kind for N = 1, 8, 16, 64 at 70% sparsity, and sampled rows against the definition. Prints "TIMING {json}" lines
// (tools/device_mask_builders.sh collects them); asserts correctness only.
TEST_F(FgSyntheticGpu, HunyuanScaleTimingAndSampledRows) {
  const Extent3 video{30, 48, 80};
  const int64_t heads = 24, M = 128;
  cudaEvent_t start, stop;
  CUDA_OK(cudaEventCreate(&start));
  CUDA_OK(cudaEventCreate(&stop));
  Rng rng(test_seed() + 720);
  for (SyntheticMask kind : {SyntheticMask::random, SyntheticMask::local})
    for (int64_t N : {1, 8, 16, 64}) {
      const char* name = kind == SyntheticMask::local ? "local" : "random";
      SCOPED_TRACE(std::string(name) + " N " + std::to_string(N));
      const ColumnPlanShape s{video.volume(), heads, M, N};
      const int64_t ng = s.num_key_groups(), rows = s.num_rows(), nq = s.num_query_blocks();
      const SyntheticMaskOptions o{
          .kind = kind, .sparsity = 0.7, .seed = test_seed(), .video = video, .text_len = 0, .keep_diagonal = true};
      DeviceBuffers buffers;
      const DeviceColumnPlan plan = alloc_plan(s, ng, buffers);
      ASSERT_NE(plan.table, nullptr);
      CUDA_OK(cudaMemset(plan.table, 0x7F, rows * ng * 4));
      CUDA_OK(cudaMemset(plan.counts, 0x7F, rows * 4));
      build_synthetic_column_plan(plan, o, nullptr);
      CUDA_OK(cudaDeviceSynchronize());
      std::vector<int64_t> sample{0, nq - 1, nq, rows - nq, rows - 1};
      for (int i = 0; i < 24; ++i) sample.push_back(pick(rng, 0, rows - 1));
      expect_rows_defined(kernels::make_synthetic_rule(s, o), plan, sample);

      build_synthetic_column_plan(plan, o, nullptr);  // warm
      CUDA_OK(cudaEventRecord(start));
      const int reps = 5;
      for (int i = 0; i < reps; ++i) build_synthetic_column_plan(plan, o, nullptr);
      CUDA_OK(cudaEventRecord(stop));
      CUDA_OK(cudaEventSynchronize(stop));
      float ms = 0;
      CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
      ms /= reps;
      double kept = 0;
      for (int32_t n : download(plan.counts, rows)) kept += n;
      kept /= double(rows * ng);
      const double table_gb = double(rows * ng) * 4 / 1e9;
      std::printf("  synthetic %s N=%lld: %.3f ms (table %.2f GB written, %.0f GB/s), %.1f%% of groups kept\n", name,
                  static_cast<long long>(N), ms, table_gb, table_gb / (ms / 1e3), 100.0 * kept);
      std::printf("TIMING {\"builder\": \"synthetic_%s\", \"N\": %lld, \"rule\": \"sparsity 0.7\", \"build_ms\": %.4f, "
                  "\"kept\": %.4f, \"table_gb\": %.3f}\n",
                  name, static_cast<long long>(N), ms, kept, table_gb);
    }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

}  // namespace

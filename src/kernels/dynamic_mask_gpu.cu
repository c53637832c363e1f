// GPU dynamic fine-grained mask builder (see dynamic_mask_gpu.hpp), host side: the launches of the score passes
// (dynamic_mask/scoring.cuh) and of the selection (dynamic_mask/selection.cuh). Plain CUDA (no CuTe); no host
// synchronization, no device allocation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/dynamic_mask/scoring.cuh"
#include "kernels/dynamic_mask/selection.cuh"
#include "kernels/dynamic_mask_layout.hpp"
#include "ops/kernel_backend.hpp"
#include "tileattn/dynamic_mask_gpu.hpp"
#include "tileattn/error.hpp"

namespace tileattn {
namespace kernels {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)  // no fmt here: nvcc cannot compile its compile-time format checks
    throw CudaError(std::string("dynamic mask: ") + what + ": " + cudaGetErrorString(err));
}

template <class Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
        "cudaFuncSetAttribute");
}

int grid_for(int64_t work, int threads) {
  return int(std::clamp<int64_t>((work + threads - 1) / threads, 1, 65535));
}

// The resolved call (ops::DynamicMaskProblem) as the launchers read it, with its stream.
struct Problem {
  const DynamicMaskArgs& a;
  const ColumnPlanShape& shape;
  const DynamicMaskLayout& layout;
  cudaStream_t stream;
  int64_t nq() const { return shape.num_query_blocks(); }
  int64_t ng() const { return shape.num_key_groups(); }
  int64_t group() const { return a.q_heads / a.kv_heads; }
  char* ws(int64_t offset) const { return static_cast<char*>(a.workspace) + offset; }
  float scale_log2() const { return ops::softmax_scale_log2(a.scale, a.head_dim); }
};

// Batch 1 takes the one-pass estimate (fused_mass_kernel); batch > 1 the statistics pass, then the masses.
bool one_pass(const Problem& pr) { return pr.a.batch == 1; }

template <DType T, int D>
void launch_pool(const Problem& pr) {
  const DynamicMaskArgs& a = pr.a;
  const int64_t nq = pr.nq(), rows = a.batch * a.q_heads * nq;
  auto* pooled = reinterpret_cast<uint16_t*>(pr.ws(pr.layout.pooled));
  pool_kernel<T><<<grid_for(rows * D, 256), 256, 0, pr.stream>>>(
      static_cast<const uint16_t*>(a.q.data), a.q.batch_stride, a.q.head_stride, a.q.token_stride, int(a.q_heads),
      int(pr.shape.tokens), int(nq), int(pr.shape.query_block), D, rows * D, pooled);
  check(cudaGetLastError(), "pool_kernel");
}

template <DType T, int D>
void launch_statistics(const Problem& pr) {
  const DynamicMaskArgs& a = pr.a;
  const int64_t nq = pr.nq(), rows = a.batch * a.q_heads * nq;
  auto* pooled = reinterpret_cast<uint16_t*>(pr.ws(pr.layout.pooled));

  StatsParams sp;
  sp.k = static_cast<const uint16_t*>(a.k.data);
  sp.k_batch_stride = a.k.batch_stride, sp.k_head_stride = a.k.head_stride, sp.k_token_stride = a.k.token_stride;
  sp.pooled = pooled;
  sp.partial = reinterpret_cast<float2*>(pr.ws(pr.layout.partial));
  sp.pooled_rows = rows;
  sp.q_heads = int(a.q_heads), sp.kv_heads = int(a.kv_heads), sp.group = int(pr.group()), sp.nq = int(nq);
  sp.tokens = int(pr.shape.tokens), sp.split_keys = int(pr.layout.stats_split_keys);
  sp.scale_log2 = pr.scale_log2();
  const size_t smem = 2 * KTile<D>::kBytes;
  set_smem(stats_kernel<T, D>, smem);
  const dim3 grid(unsigned((pr.group() * nq + kBM - 1) / kBM), unsigned(a.batch * a.kv_heads),
                  unsigned(pr.layout.stats_splits));
  stats_kernel<T, D><<<grid, kScoreThreads, smem, pr.stream>>>(sp);
  check(cudaGetLastError(), "stats_kernel");
  combine_kernel<<<grid_for(rows, 256), 256, 0, pr.stream>>>(sp.partial, int(pr.layout.stats_splits), rows, rows,
                                                                float(std::log2(double(a.batch))),
                                                                reinterpret_cast<float*>(pr.ws(pr.layout.lse)));
  check(cudaGetLastError(), "combine_kernel");
}

// Masses of query heads [h0, h0 + heads) into `mass` ([heads * nq, ng]). One pass (batch 1): scores once, the
// pass's LSE from the partials, then (to_masses) L -> mass_from_log(L, lse) in place, else `mass` keeps L for the
// selection to convert as it reads (returns true); two passes: the statistics must have run (returns false).
template <DType T, int D>
bool launch_masses(const Problem& pr, int64_t h0, int64_t heads, float* mass, bool to_masses) {
  const DynamicMaskArgs& a = pr.a;
  const bool fused = one_pass(pr);
  const int64_t heads_per_kv = std::min(heads, pr.group()), kv = heads / heads_per_kv;
  MassParams mp;
  mp.k = static_cast<const uint16_t*>(a.k.data);
  mp.k_batch_stride = a.k.batch_stride, mp.k_head_stride = a.k.head_stride, mp.k_token_stride = a.k.token_stride;
  mp.pooled = reinterpret_cast<const uint16_t*>(pr.ws(pr.layout.pooled));
  mp.lse = reinterpret_cast<const float*>(pr.ws(pr.layout.lse));
  mp.mass = mass;
  mp.batch = int(a.batch), mp.q_heads = int(a.q_heads), mp.group = int(pr.group()), mp.nq = int(pr.nq());
  mp.tokens = int(pr.shape.tokens), mp.key_group = int(pr.shape.key_group), mp.ng = int(pr.ng());
  mp.h0 = int(h0), mp.heads_per_kv = int(heads_per_kv);
  mp.scale_log2 = pr.scale_log2();
  const int64_t tiles = (heads_per_kv * pr.nq() + kBM - 1) / kBM;
  const int64_t max_splits = std::max<int64_t>(1, std::min(pr.ng(), pr.shape.tokens / (4 * kBN)));
  mp.splits = int(std::clamp<int64_t>((kDynTargetCtas + tiles * kv - 1) / (tiles * kv), 1, max_splits));
  // One pass: the splits (whole groups, at most stats_splits, so the partials fit) must not depend on the pass, so
  // that the LSE, hence the masses, are the same whatever heads_per_pass.
  if (fused) mp.splits = int(std::min(pr.layout.stats_splits, pr.ng()));
  const dim3 grid(unsigned(tiles), unsigned(kv), unsigned(mp.splits));
  if (fused) {
    auto* partial = reinterpret_cast<float2*>(pr.ws(pr.layout.partial));
    auto* lse = reinterpret_cast<float*>(pr.ws(pr.layout.lse));
    const int64_t pooled_rows = a.q_heads * pr.nq(), row0 = h0 * pr.nq(), rows = heads * pr.nq();
    auto launch = [&](auto kernel, GroupPath path) {
      const size_t smem = fused_mass_smem_bytes<D>(path);
      set_smem(kernel, smem);
      kernel<<<grid, kScoreThreads, smem, pr.stream>>>(mp, partial, pooled_rows);
    };
    switch (group_path(pr.shape.key_group)) {
      case GroupPath::single: launch(fused_mass_kernel<T, D, GroupPath::single>, GroupPath::single); break;
      case GroupPath::registers: launch(fused_mass_kernel<T, D, GroupPath::registers>, GroupPath::registers); break;
      case GroupPath::shared: launch(fused_mass_kernel<T, D, GroupPath::shared>, GroupPath::shared); break;
    }
    check(cudaGetLastError(), "fused_mass_kernel");
    combine_kernel<<<grid_for(rows, 256), 256, 0, pr.stream>>>(partial + row0, mp.splits, rows, pooled_rows, 0.0f,
                                                                lse + row0);
    check(cudaGetLastError(), "combine_kernel");
    if (!to_masses) return true;
    mass_from_log_kernel<<<unsigned(std::min<int64_t>(rows, 65535)), 256, 0, pr.stream>>>(mass, lse + row0, rows,
                                                                                          int(pr.ng()));
    check(cudaGetLastError(), "mass_from_log_kernel");
    return false;
  }
  if (pr.shape.key_group == 1) {
    const size_t smem = 2 * KTile<D>::kBytes;
    set_smem(mass_kernel<T, D, true>, smem);
    mass_kernel<T, D, true><<<grid, kScoreThreads, smem, pr.stream>>>(mp);
  } else {
    const size_t smem = 2 * KTile<D>::kBytes + sizeof(float) * kBM * (kBN + 1 + kGroupStride);
    set_smem(mass_kernel<T, D, false>, smem);
    mass_kernel<T, D, false><<<grid, kScoreThreads, smem, pr.stream>>>(mp);
  }
  check(cudaGetLastError(), "mass_kernel");
  return false;
}

template <DType T, int D>
void launch_estimate_and_passes(const Problem& pr, const DeviceColumnPlan* out, float* mass_out) {
  launch_pool<T, D>(pr);
  if (!one_pass(pr)) launch_statistics<T, D>(pr);
  const DynamicMaskArgs& a = pr.a;
  if (out == nullptr) {
    launch_masses<T, D>(pr, 0, a.q_heads, mass_out, true);
    return;
  }
  const ColumnPlanShape& shape = pr.shape;
  const ColumnSelection& sel = a.selection;
  const int64_t nq = pr.nq(), ng = pr.ng();
  SelectParams sp;
  sp.mass = reinterpret_cast<const float*>(pr.ws(pr.layout.mass));
  sp.tokens = int(shape.tokens), sp.nq = int(nq), sp.ng = int(ng);
  sp.query_block = int(shape.query_block), sp.key_group = int(shape.key_group);
  sp.rule = int(sel.rule), sp.p = sel.p, sp.k = sel.k, sp.threshold_key = threshold_key(sel.threshold);
  sp.target_sparsity = sel.target_sparsity;
  sp.keep_diagonal = sel.keep_diagonal ? 1 : 0;
  sp.text_first_group =
      sel.always_keep_text && sel.text_len > 0 ? int((shape.tokens - sel.text_len) / shape.key_group) : int(ng);
  sp.win_table = a.window ? a.window->table : nullptr;
  sp.win_counts = a.window ? a.window->counts : nullptr;
  sp.win_capacity = a.window ? a.window->capacity : 0;
  sp.table = out->table, sp.counts = out->counts, sp.capacity = out->capacity;
  sp.head_state = reinterpret_cast<DynHeadState*>(pr.ws(pr.layout.head_state));
  sp.head_hist = reinterpret_cast<DynHeadHist*>(pr.ws(pr.layout.head_hist));
  sp.row_ties = reinterpret_cast<DynRowTies*>(pr.ws(pr.layout.row_ties));
  const size_t bitmap = a.window ? size_t((ng + 31) / 32) * 4 : 0;
  // select_rows_kernel: the row's keys after the bitmap when they fit (see kMaxCachedKeyBytes).
  sp.cache_keys = ng * 4 <= kMaxCachedKeyBytes ? 1 : 0;
  const size_t select_smem = bitmap + (sp.cache_keys ? size_t(ng) * 4 : 0);
  if (select_smem > 0) set_smem(select_rows_kernel, select_smem);
  if (bitmap > 0) {
    set_smem(target_hist_kernel, bitmap);
    set_smem(target_ties_kernel, bitmap);
  }
  const bool target = sel.rule == SelectionRule::target_sparsity;
  for (int64_t h0 = 0; h0 < a.q_heads; h0 += pr.layout.heads_per_pass) {
    const int64_t heads = std::min(pr.layout.heads_per_pass, a.q_heads - h0), rows = heads * nq;
    const bool from_log = launch_masses<T, D>(pr, h0, heads, const_cast<float*>(sp.mass), false);
    sp.lse = from_log ? reinterpret_cast<const float*>(pr.ws(pr.layout.lse)) + h0 * nq : nullptr;  // batch 1
    sp.h0 = int(h0);
    sp.keys_in_place = 0;  // this pass's masses are fresh
    if (target) {
      check(cudaMemsetAsync(sp.head_state, 0, sizeof(DynHeadState) * heads, pr.stream), "cudaMemsetAsync");
      check(cudaMemsetAsync(sp.head_hist, 0, sizeof(DynHeadHist) * heads, pr.stream), "cudaMemsetAsync");
      const dim3 hist_grid(unsigned((nq + kTargetHistRows - 1) / kTargetHistRows), unsigned(heads));
      for (int level = 0; level < 3; ++level) {
        sp.keys_in_place = level > 0 ? 1 : 0;  // level 0 turns the masses into keys in place, for every later pass
        target_hist_kernel<<<hist_grid, kSelThreads, bitmap, pr.stream>>>(sp, level);
        target_scan_kernel<<<unsigned(heads), kSelThreads, 0, pr.stream>>>(sp, level);
      }
      target_ties_kernel<<<unsigned(rows), kSelThreads, bitmap, pr.stream>>>(sp);
      target_tie_split_kernel<<<unsigned(heads), kSelThreads, 0, pr.stream>>>(sp);
      check(cudaGetLastError(), "target_sparsity kernels");
    }
    select_rows_kernel<<<unsigned(rows), kSelThreads, select_smem, pr.stream>>>(sp);
    check(cudaGetLastError(), "select_rows_kernel");
  }
}

void dispatch(const Problem& pr, const DeviceColumnPlan* out, float* mass_out) {
  if (pr.a.dtype == DType::bf16)
    pr.a.head_dim == 128 ? launch_estimate_and_passes<DType::bf16, 128>(pr, out, mass_out)
                         : launch_estimate_and_passes<DType::bf16, 64>(pr, out, mass_out);
  else
    pr.a.head_dim == 128 ? launch_estimate_and_passes<DType::fp16, 128>(pr, out, mass_out)
                         : launch_estimate_and_passes<DType::fp16, 64>(pr, out, mass_out);
}

}  // namespace
}  // namespace kernels

void ops::run_dynamic_mask(const DynamicMaskProblem& problem, StreamHandle stream) {
  require_hopper_gpu(problem.operation);
  kernels::dispatch({*problem.args, problem.shape, problem.layout, static_cast<cudaStream_t>(stream)}, problem.out,
                    problem.mass);
}

}  // namespace tileattn

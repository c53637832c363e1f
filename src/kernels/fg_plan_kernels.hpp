#pragma once
// GPU kernels on fine-grained plans (fg_plan_kernels.cu): the merge of M < 128 sub-block rows that fg_forward runs
// first, and the synthetic mask builder.
#include <cuda_runtime.h>

#include "ops/fg_problem.hpp"
#include "tileattn/fg.hpp"

namespace tileattn::kernels {

struct FgMergedPlan {
  int32_t* table;
  uint8_t* membership;
  int32_t* counts;
  int64_t capacity;
};
FgMergedPlan fg_merged_plan(void* workspace, const FgWorkspaceLayout& layout);

// For each (head, 128-row query block): the ascending union of the key groups of its 128 / M sub-block rows, with a
// byte per group whose bit j says whether sub-block j lists it.
void launch_merge_subblock_rows(const DeviceColumnPlan& plan, const FgMergedPlan& out, cudaStream_t stream);

}  // namespace tileattn::kernels

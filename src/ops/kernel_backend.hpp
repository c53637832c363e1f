#pragma once
// The one seam between the ops layer (resolving, compiled in every build) and the kernels. With CUDA the host
// launchers (sta_forward_launch.cpp, sta_backward_launch.cpp, fg_forward_launch.cpp, kernels/dynamic_mask_gpu.cu)
// define these; without CUDA, no_cuda_backend.cpp defines them all, each throwing the one "no CUDA kernels" error.
// Callers resolve (validate) first, so bad input gets the same message in every build.
#include "ops/dynamic_mask_problem.hpp"
#include "ops/fg_problem.hpp"
#include "ops/sta_problem.hpp"

namespace tileattn::ops {

// initialize (kernel parameters and tensor maps from the problem), then launch on `stream`.
void run_sta_forward(const StaForwardProblem& problem, StreamHandle stream);
void run_sta_backward(const StaBackwardProblem& problem, StreamHandle stream);
void run_fg_forward(const FgForwardProblem& problem, StreamHandle stream);
void run_dynamic_mask(const DynamicMaskProblem& problem, StreamHandle stream);
// A (validated) device plan copied to the host, synchronizing on `stream`.
FixedColumnPlan download_column_plan(const DeviceColumnPlan& plan, StreamHandle stream);

// Throws CudaError "<operation>: no GPU of compute capability 9.0 (Hopper) is available to this process" unless
// the current device can run the kernels (CUDA builds: the launchers' first step).
void require_hopper_gpu(const char* operation);

}  // namespace tileattn::ops

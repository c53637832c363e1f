#pragma once
// The e4m3 STA forward on the CUDA backend (run_sta_forward's branch for precision = fp8).
#include "ops/sta_problem.hpp"

namespace tileattn::ops {

// The quantizing pre-pass into the call's workspace, then the e4m3 kernel, on `stream` (no host synchronization).
void run_sta_fp8_forward(const StaForwardProblem& problem, StreamHandle stream);

}  // namespace tileattn::ops

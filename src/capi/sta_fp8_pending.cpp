// PENDING, delete when the FP8 launcher lands: a weak stand-in for tileattn::sta_forward_workspace_bytes (declared in
// sta.hpp, implemented with the FP8 forward in src/ops/sta_fp8_*.cpp, whose strong definition replaces this one at
// link time). It lets the C ABI, the CLI and the Python package that pass `precision` through build and be tested
// before the kernel exists. Native precision: validates like sta_forward and needs no workspace; fp8: refused.
#include "ops/sta_problem.hpp"
#include "tileattn/error.hpp"
#include "tileattn/sta.hpp"

namespace tileattn {

[[gnu::weak]] int64_t sta_forward_workspace_bytes(const StaForwardArgs& args) {
  (void)ops::resolve_sta_shape(args);
  if (args.precision == Precision::fp8)
    throw_argument_error("precision", "fp8: this build has no FP8 STA forward (src/ops/sta_fp8_*.cpp)");
  return 0;
}

}  // namespace tileattn

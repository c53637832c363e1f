#pragma once
// Sliding Tile Attention forward on the GPU (Hopper, sm_90a).
//
// q/k/v/out are [batch, heads, tokens, head_dim] device tensors (SDPA's layout) with arbitrary element strides and
// head_dim contiguous; tokens = T*H*W video tokens (natural row-major (t, h, w) order, or tile-major) followed by
// text_len text tokens. Each query head has its own window (counted in tiles); video queries see the key tiles of
// their window and every valid text token; text queries see every video token and every valid text token.
//
// The call validates everything it can on the host (no host synchronization, no device allocation), then launches
// on `stream`; it can be captured in a CUDA graph. Throws ArgumentError / CudaError.
#include <cstdint>
#include <span>

#include "tileattn/geometry.hpp"
#include "tileattn/types.hpp"
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

struct StaForwardArgs {
  DType dtype = DType::bf16;
  int64_t batch = 1;
  int64_t q_heads = 1;
  int64_t kv_heads = 1;  // q_heads must be a multiple (GQA)
  int64_t head_dim = 128;  // 64 or 128
  Extent3 video;           // T, H, W in tokens
  Extent3 tile = kDefaultTile;
  int64_t text_len = 0;
  TokenLayout layout = TokenLayout::natural;  // tile_major needs a video shape that is a multiple of the tile
  DeviceTensor q, k, v, out;
  float* lse = nullptr;                  // optional [batch, q_heads, tokens] fp32, contiguous, same token order
  const int32_t* text_valid = nullptr;   // optional device array [batch]: valid text tokens (clamped to [0, text_len])
  std::span<const Window> windows;       // empty: dense; one window: all heads; else one per query head
  float scale = 0.0f;                    // 0: 1 / sqrt(head_dim)
  Precision precision = Precision::native;
  // precision = fp8: device scratch for the quantized operands and their scales, sta_forward_workspace_bytes(args)
  // bytes, 256-byte aligned; overwritten. Unused (may be null) for native precision.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// Bytes of `workspace` the forward needs: 0 for native precision; for fp8 about 3 * tokens * heads * head_dim bytes
// (the 8-bit copies of Q, K and V) plus the scales. Validates the arguments like sta_forward.
int64_t sta_forward_workspace_bytes(const StaForwardArgs& args);
void sta_forward(const StaForwardArgs& args, StreamHandle stream);

// Sliding Tile Attention backward on the GPU (Hopper, sm_90a): dQ, dK, dV of the call described by `forward`, whose
// `out` is the forward output O and whose `lse` (required) is the forward's LSE. Gradients have the shapes of q, k,
// v (dK/dV summed over the query heads of a GQA group) and the same token layout; any strides as for the forward.
// Keys the windows hide get zero gradient, and so do text keys at positions >= text_valid[b].
//
// Three kernels run on `stream`: a preprocessing pass (rowwise dot(dO, O), LSE rescaled to log2), the main kernel
// (one CTA per key block of 128 rows walking the query blocks whose windows cover it: the plan's transpose;
// dK/dV accumulate in registers, dQ in an fp32 buffer in `workspace`) and a pass converting dQ to the input dtype.
// `workspace` must hold sta_backward_workspace_bytes(forward) bytes (256-byte aligned); its content is overwritten.
// deterministic = false adds dQ contributions with asynchronous bulk reductions, in whatever order CTAs finish;
// deterministic = true adds them in a fixed order (key-block order, serialised per query block by a semaphore in the
// workspace), so gradients are bitwise identical run to run, at some cost in speed.
struct StaBackwardArgs {
  StaForwardArgs forward;            // q, k, v, out (= O), lse, windows, geometry exactly as given to the forward
  DeviceTensor grad_out, grad_q, grad_k, grad_v;
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
  bool deterministic = false;
};

int64_t sta_backward_workspace_bytes(const StaForwardArgs& forward);
void sta_backward(const StaBackwardArgs& args, StreamHandle stream);

// Checks the tile shape against what the GPU kernel supports; throws ArgumentError naming "tile" if it cannot.
void validate_gpu_tile(const Extent3& tile);

}  // namespace tileattn
TILEATTN_PUBLIC_END

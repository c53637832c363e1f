// Host side of the STA forward kernel: validates arguments, builds the TMA tensor maps and launches. No host
// synchronization and no device allocation, so a call can be captured in a CUDA graph.
#include <cuda_runtime.h>


#include "kernels/sta_kernel_params.hpp"
#include "kernels/sta_validation.hpp"
#include "kernels/tensor_maps.hpp"
#include "tileattn/error.hpp"
#include "tileattn/sta.hpp"

namespace tileattn {

bool gpu_kernels_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return kernels::current_device_is_hopper();
}

namespace kernels {

int choose_block_n(const StaForwardArgs& a) {
  // 192-row key blocks halve the per-block softmax/rescale overhead relative to the MMA work (FA3 uses 176 for head
  // dim 128); they need whole frames: tile_t must be a multiple of 192 / (tile_h * tile_w).
  const int64_t plane = a.tile.h * a.tile.w;
  if (a.head_dim == 128 && 192 % plane == 0 && a.tile.t % (192 / plane) == 0) return 192;
  return 128;
}

std::vector<StaLaunch> prepare_sta_launches(const StaForwardArgs& a, int block_n) {
  validate_sta_forward_args(a);
  if (!gpu_kernels_available())
    throw CudaError("sta_forward: no GPU of compute capability 9.0 (Hopper) is available to this process");
  const VideoGeometry geo(a.video, a.tile, a.text_len);
  const TiledBlocks query = tiled_blocks(a, kQueryBlockRows), key = tiled_blocks(a, block_n);
  StaKernelParams p{};
  fill_shared_params(p, a, kQueryBlockRows, block_n);

  const bool fold =
      batch_folds(a.batch, {{a.q, a.q_heads}, {a.k, a.kv_heads}, {a.v, a.kv_heads}, {a.out, a.q_heads}});
  const int64_t launches = fold ? 1 : a.batch;
  const int64_t batch_per_launch = fold ? a.batch : 1;
  p.batch_in_launch = int(batch_per_launch);
  const TensorMapFactory maps(a, batch_per_launch);

  const int64_t blocks_per_bh = geo.num_tiles() * p.query_blocks_per_tile + p.num_text_query_blocks;
  const int64_t ctas = batch_per_launch * a.q_heads * blocks_per_bh;
  if (ctas >= (int64_t{1} << 31)) throw_argument_error("batch", "too many query blocks for one launch");
  std::vector<StaLaunch> out;
  for (int64_t l = 0; l < launches; ++l) {
    p.batch_offset = int(l * batch_per_launch);
    p.q_video = maps.video("q", a.q, a.q_heads, l, query.frames);
    p.k_video = maps.video("k", a.k, a.kv_heads, l, key.frames);
    p.v_video = maps.video("v", a.v, a.kv_heads, l, key.frames);
    p.o_video = maps.video("out", a.out, a.q_heads, l, query.frames / 2);
    p.q_text = maps.text("q", a.q, a.q_heads, l, kQueryBlockRows);
    p.k_text = maps.text("k", a.k, a.kv_heads, l, block_n);
    p.v_text = maps.text("v", a.v, a.kv_heads, l, block_n);
    p.o_text = maps.text("out", a.out, a.q_heads, l, kQueryBlockRows / 2);
    out.push_back({p, ctas});
  }
  return out;
}

}  // namespace kernels

void sta_forward(const StaForwardArgs& a, StreamHandle stream) {
  const int block_n = kernels::choose_block_n(a);
  const std::vector<kernels::StaLaunch> launches = kernels::prepare_sta_launches(a, block_n);
  for (const kernels::StaLaunch& l : launches) {
    auto* s = static_cast<CUstream_st*>(stream);
    if (a.dtype == DType::bf16)
      a.head_dim == 128 ? kernels::launch_sta_forward_sm90<DType::bf16, 128>(l.params, l.num_ctas, block_n, s)
                        : kernels::launch_sta_forward_sm90<DType::bf16, 64>(l.params, l.num_ctas, block_n, s);
    else
      a.head_dim == 128 ? kernels::launch_sta_forward_sm90<DType::fp16, 128>(l.params, l.num_ctas, block_n, s)
                        : kernels::launch_sta_forward_sm90<DType::fp16, 64>(l.params, l.num_ctas, block_n, s);
  }
}

}  // namespace tileattn

// The e4m3 STA forward's host side (no GPU needed): its arguments, its workspace layout, the V^T key order.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

#include "kernels/fp8_value_order.hpp"
#include "kernels/fp8_workspace.hpp"
#include "tileattn/error.hpp"
#include "tileattn/sta.hpp"

using namespace tileattn;

namespace {

alignas(256) char fake_tensor[256];

StaForwardArgs fp8_args() {
  StaForwardArgs a;
  a.video = {6, 8, 8};
  a.text_len = 10;
  a.precision = Precision::fp8;
  const int64_t n = 6 * 8 * 8 + 10;
  a.q = a.k = a.v = a.out = {fake_tensor, n * 128, n * 128, 128};
  return a;
}

std::string argument_of(const StaForwardArgs& a) {
  try {
    sta_forward(a, nullptr);
  } catch (const ArgumentError& e) {
    return e.argument();
  } catch (const std::exception&) {
    return "(not an ArgumentError)";
  }
  return "(no error)";
}

}  // namespace

TEST(StaFp8, WorkspaceBytesCoverTheQuantizedCopies) {
  StaForwardArgs a = fp8_args();
  const int64_t bytes = sta_forward_workspace_bytes(a);
  // e4m3 Q, K and V: at least one byte per element of each, padded rows included.
  EXPECT_GE(bytes, 3 * (6 * 8 * 8 + 10) * 128);
  a.precision = Precision::native;
  EXPECT_EQ(sta_forward_workspace_bytes(a), 0);
  a.precision = Precision::fp8;
  a.q_heads = 4;
  a.kv_heads = 2;
  EXPECT_GT(sta_forward_workspace_bytes(a), bytes);
}

// Every region of the workspace has its documented size, starts 256-byte aligned and overlaps no other: the pre-pass
// writes them all from different kernels, so an overlap would corrupt one silently.
TEST(StaFp8, WorkspaceRegionsAreDisjoint) {
  for (auto [batch, q_heads, kv_heads, d, text] : {std::tuple{1, 24, 24, 128, 256}, {2, 4, 2, 64, 0}, {3, 6, 1, 128, 77}}) {
    const int64_t video_rows = 30 * 6 * 8 * 8, tokens = video_rows + text;
    const kernels::Fp8Workspace w =
        kernels::fp8_workspace_layout(batch, q_heads, kv_heads, d, video_rows, tokens, text);
    const int64_t qbh = w.q_bh, kvbh = w.kv_bh, rows = w.rows, per_chunk = kvbh * w.chunks * d * 4;
    const std::vector<std::pair<int64_t, int64_t>> regions = {
        {w.q8, qbh * rows * d},          {w.k8, kvbh * rows * d},
        {w.v8t, kvbh * rows * d},        {w.q_scale, qbh * w.groups * 4},
        {w.k_scale, kvbh * w.groups * kernels::kFp8ScaleWindow * 4},
        {w.v_scale, kvbh * d * 4},       {w.k_mean, kvbh * d * 4},
        {w.v_mean, kvbh * d * 4},        {w.balance, kvbh * d * 4},
        {w.lse_shift, qbh * rows * 4},   {w.k_sum_partial, per_chunk},
        {w.k_max_partial, per_chunk},    {w.k_min_partial, per_chunk},
        {w.v_sum_partial, per_chunk},    {w.v_max_partial, per_chunk},
        {w.v_min_partial, per_chunk},    {w.q_max_partial, per_chunk}};
    std::vector<std::pair<int64_t, int64_t>> sorted = regions;
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size(); ++i) {
      EXPECT_EQ(sorted[i].first % 256, 0) << "region " << i;
      EXPECT_GT(sorted[i].second, 0) << "region " << i;
      const int64_t end = sorted[i].first + sorted[i].second;
      EXPECT_LE(end, i + 1 < sorted.size() ? sorted[i + 1].first : w.total) << "region at " << sorted[i].first;
    }
    EXPECT_EQ(w.rows % 256, 0);
    EXPECT_GE(w.rows, video_rows + text + 192);  // the last text key block may start at the last text row
  }
}

TEST(StaFp8, NamesTheBadArgument) {
  StaForwardArgs a = fp8_args();
  EXPECT_EQ(argument_of(a), "workspace");  // none given
  std::vector<char> buffer(sta_forward_workspace_bytes(a) + 512);
  char* aligned = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(buffer.data()) + 255) & ~uintptr_t(255));
  a.workspace = aligned + 16;
  a.workspace_bytes = sta_forward_workspace_bytes(a);
  EXPECT_EQ(argument_of(a), "workspace");  // misaligned
  a.workspace = aligned;
  a.workspace_bytes -= 1;
  EXPECT_EQ(argument_of(a), "workspace_bytes");
  a.precision = static_cast<Precision>(7);
  EXPECT_EQ(argument_of(a), "precision");
  // A complete call gets past validation: without a GPU it fails on the device, not on its arguments.
  a = fp8_args();
  a.workspace = aligned;
  a.workspace_bytes = sta_forward_workspace_bytes(a);
  if (!gpu_kernels_available()) EXPECT_THROW(sta_forward(a, nullptr), CudaError);
}

TEST(StaFp8, WorkspaceRowsHoldEveryBlockAPlanVisits) {
  std::mt19937_64 rng(17);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t tiles = std::uniform_int_distribution<int64_t>(1, 400)(rng);
    const int64_t volume = std::array<int64_t, 3>{128, 256, 384}[trial % 3];
    const int64_t text = std::uniform_int_distribution<int64_t>(0, 700)(rng);
    const kernels::Fp8Workspace w =
        kernels::fp8_workspace_layout(2, 4, 2, 128, tiles * volume, tiles * volume + text, text);
    EXPECT_EQ(w.rows % 256, 0);
    EXPECT_EQ(w.groups * kernels::kFp8GroupRows, w.rows);
    for (int64_t block : {128, 192}) {
      const int64_t text_blocks = (text + block - 1) / block;
      EXPECT_LE(w.video_rows + text_blocks * block, w.rows);            // the last text key block
      EXPECT_LE(w.video_rows + ((text + 127) / 128) * 128, w.rows);     // the last text query block
    }
    // Offsets are 256-byte aligned (TMA and bulk copies) and in order.
    for (int64_t off : {w.q8, w.k8, w.v8t, w.q_scale, w.k_scale, w.v_scale, w.k_mean, w.balance, w.lse_shift,
                        w.k_sum_partial, w.k_max_partial, w.k_min_partial, w.v_max_partial, w.q_max_partial, w.total})
      EXPECT_EQ(off % 256, 0);
    EXPECT_GE(w.k8 - w.q8, 2 * 4 * w.rows * 128);
  }
}

// V^T's key order: a permutation of each 32 keys, and the one that lets thread t of a quad pack its own S columns
// {2t, 2t+1, 8+2t, 9+2t} (+16: registers 8..15 of the slice) into A positions 4t .. 4t+3 (+16).
TEST(StaFp8, ValueOrderMatchesTheAccumulatorToOperandPacking) {
  std::set<int> keys;
  for (int p = 0; p < 32; ++p) {
    keys.insert(kernels::value_key_at(p));
    EXPECT_EQ(kernels::value_position_of(kernels::value_key_at(p)), p);
  }
  EXPECT_EQ(keys.size(), 32u);
  EXPECT_EQ(*keys.rbegin(), 31);
  for (int t = 0; t < 4; ++t) {
    const int columns[8] = {2 * t, 2 * t + 1, 8 + 2 * t, 9 + 2 * t, 16 + 2 * t, 17 + 2 * t, 24 + 2 * t, 25 + 2 * t};
    const int positions[8] = {4 * t, 4 * t + 1, 4 * t + 2, 4 * t + 3, 16 + 4 * t, 17 + 4 * t, 18 + 4 * t, 19 + 4 * t};
    for (int i = 0; i < 8; ++i) EXPECT_EQ(kernels::value_key_at(positions[i]), columns[i]) << "thread " << t;
  }
}

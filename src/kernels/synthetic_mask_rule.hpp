#pragma once
// The synthetic masks of build_synthetic_column_plan (fg.hpp) as one rule for the device and the host: the kernel in
// fg_plan_kernels.cu runs it, the CPU tests (tests/cpu/test_synthetic_rule.cpp) and the 720p GPU test check the
// direct form against the per-group definition.
//
//  keeps(head, qb, g)      the definition: is group g in row (head, qb)? (random: a hash; local: a scan of the
//                          group's positions against the row's box). O(N) per group for local.
//  local_row_runs(qb, f)   the local row directly: the ascending runs of kept groups, O(box lines + kept), no scan of
//                          the row's groups. f(first, end, slot) gets groups [first, end) for slots [slot, ...).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tileattn/column_plan.hpp"
#include "tileattn/error.hpp"
#include "tileattn/fg.hpp"

#if defined(__CUDACC__)
#define TILEATTN_HD __host__ __device__
#else
#define TILEATTN_HD
#endif

namespace tileattn::kernels {

TILEATTN_HD inline uint64_t synthetic_mix64(uint64_t x) {  // splitmix64 finaliser
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// a / b for 0 <= a, 1 <= b < 2^32 (positions: tokens < 2^31) in 32-bit arithmetic: a 64-bit division is several
// times dearer on the GPU, and the local rows divide twice per box line.
TILEATTN_HD inline int64_t div32(int64_t a, int64_t b) { return int64_t(uint32_t(a) / uint32_t(b)); }

struct SyntheticRule {
  int64_t tokens, query_block, key_group;  // the plan's shape (M, N)
  int kind;                                // SyntheticMask
  double keep;                             // 1 - sparsity
  uint64_t keep_below;                     // random: kept iff the hash's top 53 bits < this (keep_threshold(keep))
  uint64_t seed;
  int64_t video_t, video_h, video_w, num_video;  // num_video = tokens for random
  int64_t box_t, box_h, box_w;
  bool keep_diagonal;

  TILEATTN_HD int64_t groups() const { return (tokens + key_group - 1) / key_group; }

  // Row qb's box (local) and whether its centre is text.
  struct Row {
    int64_t q_first, q_last;
    bool text_query;
    int64_t b_t, b_h, b_w;
  };
  TILEATTN_HD static int64_t box_start(int64_t centre, int64_t side, int64_t extent) {
    int64_t start = centre - side / 2;
    start = start < 0 ? 0 : start;
    return start + side > extent ? extent - side : start;
  }
  TILEATTN_HD Row row(int64_t qb) const {
    Row r{};
    r.q_first = qb * query_block;
    const int64_t size = r.q_first + query_block < tokens ? query_block : tokens - r.q_first;
    r.q_last = r.q_first + size - 1;
    const int64_t centre = r.q_first + size / 2;
    r.text_query = centre >= num_video;
    if (kind == int(SyntheticMask::local) && !r.text_query) {
      const int64_t w = centre % video_w, h = (centre / video_w) % video_h, t = centre / (video_w * video_h);
      r.b_t = box_start(t, box_t, video_t), r.b_h = box_start(h, box_h, video_h), r.b_w = box_start(w, box_w, video_w);
    }
    return r;
  }

  // The definition, group by group.
  TILEATTN_HD bool keeps(int64_t head, const Row& r, int64_t qb, int64_t g) const {
    const int64_t N = key_group;
    const int64_t first = g * N, last = (first + N < tokens ? first + N : tokens) - 1;  // the group's positions
    if (keep_diagonal && first <= r.q_last && r.q_first <= last) return true;
    if (kind == int(SyntheticMask::random)) {
      const uint64_t h = synthetic_mix64(
          seed ^ synthetic_mix64((uint64_t(head) << 40) ^ (uint64_t(qb) << 20) ^ synthetic_mix64(uint64_t(g))));
      return (h >> 11) < keep_below;  // = double(h >> 11) * 2^-53 < keep
    }
    if (r.text_query || last >= num_video) return true;  // text queries see all; every group holding text is kept
    for (int64_t p = first; p <= last; ++p) {
      const int64_t w = p % video_w, h = (p / video_w) % video_h, t = p / (video_w * video_h);
      if (t >= r.b_t && t < r.b_t + box_t && h >= r.b_h && h < r.b_h + box_h && w >= r.b_w && w < r.b_w + box_w)
        return true;
    }
    return false;
  }

  // Local rows directly. The kept groups are the union of: (text query) every group; else the diagonal groups
  // [q_first / N, q_last / N] (keep_diagonal), the groups holding text [num_video / N, groups) (a group holds text
  // iff its last position >= num_video), and per box line (t, h) the groups of positions [p0, p0 + box_w) with
  // p0 = (t H + h) W + b_w. The lines' first groups ascend and the text run starts at or after all of them (and
  // after the diagonal's, whose first position precedes the video centre), so taking the runs in order of their
  // first group, each clipped to the groups not yet written, writes the union ascending without duplicates.
  // Returns the kept count (the emitter sees every slot, capacity or not).
  template <class Emit>
  TILEATTN_HD int64_t local_row_runs(int64_t qb, Emit&& emit) const {
    const Row r = row(qb);
    const int64_t N = key_group, ng = groups();
    int64_t next = 0, slot = 0;
    auto take = [&](int64_t a, int64_t b) {  // groups [a, b], a non-decreasing over the calls
      a = a > next ? a : next;
      if (a > b) return;
      emit(a, b + 1, slot);
      slot += b + 1 - a;
      next = b + 1;
    };
    if (r.text_query) {
      take(0, ng - 1);
      return slot;
    }
    const int64_t d0 = r.q_first / N, d1 = r.q_last / N;
    bool diag = !keep_diagonal;  // true: done (or not wanted)
    for (int64_t t = r.b_t; t < r.b_t + box_t; ++t)
      for (int64_t h = r.b_h; h < r.b_h + box_h; ++h) {
        const int64_t p0 = (t * video_h + h) * video_w + r.b_w;
        const int64_t a = div32(p0, N);
        if (!diag && d0 <= a) take(d0, d1), diag = true;
        take(a, div32(p0 + box_w - 1, N));
      }
    if (!diag) take(d0, d1);
    if (num_video < tokens) take(num_video / N, ng - 1);
    return slot;
  }
};

// For the 53-bit integers x: x * 2^-53 < keep (exact in double) iff x < ceil(keep * 2^53), keep in [0, 1].
inline uint64_t keep_threshold(double keep) { return static_cast<uint64_t>(std::ceil(keep * 0x1.0p53)); }

// The rule of `options` on a plan of `shape` (validates the options as build_synthetic_column_plan documents).
inline SyntheticRule make_synthetic_rule(const ColumnPlanShape& shape, const SyntheticMaskOptions& o) {
  if (!(o.sparsity >= 0.0 && o.sparsity < 1.0))
    throw_argument_error("sparsity", "must be in [0, 1), got " + std::to_string(o.sparsity));
  if (o.kind != SyntheticMask::random && o.kind != SyntheticMask::local)
    throw_argument_error("kind", "must be SyntheticMask::random or SyntheticMask::local");
  SyntheticRule s{};
  s.tokens = shape.tokens, s.query_block = shape.query_block, s.key_group = shape.key_group;
  s.kind = int(o.kind), s.keep = 1.0 - o.sparsity, s.keep_below = keep_threshold(s.keep), s.seed = o.seed, s.keep_diagonal = o.keep_diagonal;
  s.video_t = std::max<int64_t>(o.video.t, 1), s.video_h = std::max<int64_t>(o.video.h, 1);
  s.video_w = std::max<int64_t>(o.video.w, 1);
  s.num_video = shape.tokens;
  if (o.kind == SyntheticMask::local) {
    if (o.video.t < 1 || o.video.h < 1 || o.video.w < 1)
      throw_argument_error("video", "the local mask needs a video shape with every side >= 1");
    if (o.text_len < 0 || o.video.volume() + o.text_len != shape.tokens)
      throw_argument_error("video", "video volume + text_len must equal the plan's tokens (" +
                                        std::to_string(shape.tokens) + ")");
    s.num_video = o.video.volume();
    const double f = std::cbrt(1.0 - o.sparsity);
    auto side = [&](int64_t extent) { return std::clamp<int64_t>(std::llround(f * double(extent)), 1, extent); };
    s.box_t = side(o.video.t), s.box_h = side(o.video.h), s.box_w = side(o.video.w);
  }
  return s;
}

}  // namespace tileattn::kernels

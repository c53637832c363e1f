// libFuzzer: the arguments of `tileattn plan` as the CLI parses them (--shape, --tile, --window lists, --text,
// --heads) through the geometry, window validation and the STA plan builder, with the plan's own invariants checked
// for accepted inputs. Sizes are bounded by the library's limits (limits::kMaxPlanEntries), so no input may allocate
// without bound or wrap.
#include <fuzzer/FuzzedDataProvider.h>

#include <string>
#include <vector>

#include "fuzz_common.hpp"
#include "tileattn/geometry.hpp"
#include "tileattn/plan.hpp"

namespace {

std::string number(FuzzedDataProvider& p) {
  static const char* kValues[] = {"0", "1", "2", "3", "5", "8", "-1", "4294967296", "2147483647", "2147483648",
                                  "9223372036854775807", "9223372036854775808", "18446744073709551617", "", "x"};
  if (p.ConsumeBool()) return p.PickValueInArray(kValues);
  return std::to_string(p.ConsumeIntegralInRange<int>(1, p.ConsumeBool() ? 8 : 300));
}

std::string extent(FuzzedDataProvider& p) {
  if (p.ConsumeIntegralInRange<int>(0, 15) == 0) return p.ConsumeRandomLengthString(16);
  return number(p) + "x" + number(p) + "x" + number(p);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider p(data, size);
  const std::string shape = extent(p), tile = extent(p);
  std::vector<std::string> window_texts(p.ConsumeIntegralInRange<int>(1, 6));
  for (auto& w : window_texts) w = extent(p);
  const int64_t text = p.ConsumeBool() ? p.ConsumeIntegralInRange<int64_t>(-2, 600) : p.ConsumeIntegral<int64_t>();
  fuzz::expect_clean([&] {
    using namespace tileattn;
    const Extent3 video = parse_extent3(shape, "--shape"), tiles = parse_extent3(tile, "--tile");
    // Harness bound (not the library's): past 2^10 tiles or text tokens a valid plan can take seconds and hundreds of
    // MB under ASan; the limits themselves are covered by tests/cli/check_bad_inputs.py.
    const Extent3 grid{detail::ceil_div(video.t, tiles.t), detail::ceil_div(video.h, tiles.h),
                       detail::ceil_div(video.w, tiles.w)};
    constexpr int64_t kMax = 1 << 10;
    if (grid.t > kMax || grid.h > kMax || grid.w > kMax || grid.t * grid.h * grid.w > kMax || text > kMax) return;
    const VideoGeometry geo(video, tiles, text);
    if (geo.num_tokens() < 1 || geo.num_tokens() > limits::kMaxTokens || geo.num_tiles() > limits::kMaxTiles)
      __builtin_trap();
    std::vector<Window> windows;
    for (const std::string& w : window_texts) windows.push_back(parse_extent3(w, "--window"));
    const BlockPlan plan = build_sta_plan(BlockPartition(geo), windows);
    const SparsityReport r = plan.sparsity();
    if (!(r.total >= 0.0 && r.total < 1.0) || r.visited_pairs > r.total_pairs) __builtin_trap();
  });
  return 0;
}

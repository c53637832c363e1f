// libFuzzer: the mask-strategy reader (FastVideo's flat format and tileattn's) on arbitrary text, and, for accepted
// strategies, the normalised dump read back (it must parse to the same strategy).
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_common.hpp"
#include "tileattn/mask_strategy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::expect_clean([&] {
    const tileattn::MaskStrategy s = tileattn::parse_mask_strategy(text, "fuzz");
    const std::string again = tileattn::dump_mask_strategy(s, tileattn::MaskStrategyFormat::tileattn);
    const tileattn::MaskStrategy t = tileattn::parse_mask_strategy(again, "fuzz (normalised)");
    if (t.windows != s.windows || t.dense_steps != s.dense_steps || t.default_window != s.default_window ||
        t.precision != s.precision || t.layer_precision != s.layer_precision)
      __builtin_trap();
  });
  // The file path (bounded read) on the same bytes.
  const std::string& path = fuzz::write_scratch("strategy", data, size);
  fuzz::expect_clean([&] { (void)tileattn::read_mask_strategy(path); });
  return 0;
}

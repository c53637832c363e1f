#pragma once
// Mask-strategy files: which STA window each (denoising step, layer, head) uses.
//
// Two JSON formats are read and written:
//  * FastVideo's: a flat object {"<step>_<layer>_<head>": [wt, wh, ww], ...} (windows in tiles).
//  * tileattn's richer one:
//      {"format": "tileattn.mask_strategy", "version": 1,
//       "video_shape": [T, H, W], "tile": [tt, th, tw], "text_len": 256,          (optional, all three together)
//       "default": [wt, wh, ww] | null,                                             (optional)
//       "dense_steps": 0,                                                           (optional)
//       "windows": {"<step>_<layer>_<head>": [wt, wh, ww], ...},
//       "precision": "native" | "fp8",                    (optional, default native: every layer's precision)
//       "layer_precision": {"<layer>": "native" | "fp8", ...}}  (optional: layers that differ from "precision")
//   precision is what the STA forward multiplies (StaForwardArgs::precision), per layer for all steps; FastVideo's
//   format has none (every layer native).
// Malformed files raise FileError naming the file, the key and what is wrong.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>

#include "tileattn/geometry.hpp"
#include "tileattn/types.hpp"
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

struct StrategyKey {
  int64_t step = 0;
  int64_t layer = 0;
  int64_t head = 0;
  friend auto operator<=>(const StrategyKey&, const StrategyKey&) = default;
};
std::string to_string(const StrategyKey& key);  // "step_layer_head"

enum class MaskStrategyFormat { fastvideo, tileattn };

struct MaskStrategy {
  std::map<StrategyKey, Window> windows;
  std::optional<Window> default_window;  // used for keys without an entry
  std::optional<VideoGeometry> geometry;  // shape, tile and text length the windows were chosen for
  int64_t dense_steps = 0;                // steps < dense_steps run dense attention whatever the windows say
  Precision precision = Precision::native;           // every layer's, unless layer_precision names it
  std::map<int64_t, Precision> layer_precision;      // layer -> precision

  Precision precision_for(int64_t layer) const;

  // The window for (step, layer, head): the entry, else the default, else nullopt (dense / fall back to SDPA).
  std::optional<Window> window_for(int64_t step, int64_t layer, int64_t head) const;
  // Checks every window against geometry's grid (if geometry is set); throws ArgumentError naming the key.
  void validate() const;
};

// Reads either format (detected from the content). Throws FileError.
MaskStrategy read_mask_strategy(const std::string& path);
MaskStrategy parse_mask_strategy(const std::string& json_text, const std::string& source_name);
void write_mask_strategy(const MaskStrategy& strategy, const std::string& path, MaskStrategyFormat format);
std::string dump_mask_strategy(const MaskStrategy& strategy, MaskStrategyFormat format);

}  // namespace tileattn
TILEATTN_PUBLIC_END

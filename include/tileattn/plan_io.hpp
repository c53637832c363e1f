#pragma once
// Tile-level views of a plan, for people (SVG) and for other tools (JSON). Both need a plan whose video blocks are
// whole tiles (BlockPartition with frames_per_block == tile.t).
//
// JSON, one head:  {"grid": [nt, nh, nw], "sparsity": s, "query_tiles": [{"tile": [t, h, w], "keys": [[t, h, w], ...]}]}
//   sparsity = skipped (query, key) pairs / all pairs, text tokens included; "keys" lists the visited video key
//   tiles in the plan's order (text keys are implied: every video query sees every valid text token).
// JSON, several heads: {"grid": [...], "sparsity": <over all heads>, "heads": [<one-head object>, ...]}
#include <string>

#include "tileattn/plan.hpp"
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

std::string tile_plan_json(const BlockPlan& plan, bool per_head_objects);
// The tile-level attention map of one head: query tiles down, key tiles across, visited tiles filled; text
// blocks form the last row/column band.
std::string tile_plan_svg(const BlockPlan& plan, int64_t head, const std::string& title);

}  // namespace tileattn
TILEATTN_PUBLIC_END

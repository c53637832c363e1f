#pragma once
// The plan: tileattn's one representation of sparsity. For each (head, query block) it lists, in order, the key
// blocks that the query block visits. Every kernel and the CPU reference consume it; STA windows, user block masks
// (and later fine-grained column lists) are builders of it.
//
// Blocks. Tokens are cut into blocks by a BlockPartition. A video block is a sub-box of one tile: `frames_per_block`
// consecutive frames of the tile (its full height and width). In tile-major order a video block is a contiguous
// run of tokens; in natural order it is a 3D box. With frames_per_block == tile.t a block is a whole tile
// (the tile-level plan the CLI prints). Text tokens are cut into runs of `text_block_size`. Block ids: video blocks
// first (tile_index * blocks_per_tile + sub), then text blocks. A sub-block that lies past the end of a partial tile
// has no tokens; builders never list it.
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "tileattn/geometry.hpp"
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

enum class BlockKind : uint8_t { video, text };

struct BlockInfo {
  BlockKind kind;
  int64_t tile_index = -1;  // video blocks
  int64_t sub = 0;          // video: which frames_per_block slice of the tile
  Extent3 origin;           // video: first token coordinate; text: {0,0,first text position}
  Extent3 extent;           // video: valid tokens per axis (may be 0 in t for an empty slice); text: {1,1,length}
  int64_t size() const { return extent.volume(); }
};

class BlockPartition {
 public:
  // frames_per_block in [1, tile.t] (0 means tile.t); text_block_size >= 1.
  BlockPartition(VideoGeometry geometry, int64_t frames_per_block = 0, int64_t text_block_size = 128);

  const VideoGeometry& geometry() const { return geometry_; }
  int64_t frames_per_block() const { return frames_per_block_; }
  int64_t text_block_size() const { return text_block_size_; }
  int64_t blocks_per_tile() const { return blocks_per_tile_; }
  int64_t num_video_blocks() const { return geometry_.num_tiles() * blocks_per_tile_; }
  int64_t num_text_blocks() const { return detail::ceil_div(geometry_.text_len(), text_block_size_); }
  int64_t num_blocks() const { return num_video_blocks() + num_text_blocks(); }

  BlockInfo block(int64_t block_id) const;
  int64_t block_size(int64_t block_id) const { return block(block_id).size(); }
  int64_t video_block_id(int64_t tile_index, int64_t sub) const { return tile_index * blocks_per_tile_ + sub; }
  int64_t text_block_id(int64_t text_block) const { return num_video_blocks() + text_block; }
  // Natural-order token indices of the block, in the block's (tile-major) order.
  std::vector<int64_t> tokens(int64_t block_id) const;
  // Block holding the natural-order token.
  int64_t block_of_token(int64_t natural_index) const;

  friend bool operator==(const BlockPartition&, const BlockPartition&) = default;

 private:
  VideoGeometry geometry_;
  int64_t frames_per_block_;
  int64_t text_block_size_;
  int64_t blocks_per_tile_;
};

struct SparsityReport {
  std::vector<double> per_head;  // fraction of (query, key) pairs skipped, per head
  double total = 0;              // over all heads
  int64_t visited_pairs = 0;     // over all heads
  int64_t total_pairs = 0;       // heads * tokens^2
};

class BlockPlan {
 public:
  // rows.size() == heads * partition.num_blocks(); rows[h * num_blocks + q] lists the key blocks of query block q.
  // Throws ArgumentError on out-of-range or repeated key blocks.
  BlockPlan(BlockPartition partition, int64_t heads, const std::vector<std::vector<int32_t>>& rows);

  const BlockPartition& partition() const { return partition_; }
  int64_t heads() const { return heads_; }
  int64_t num_query_blocks() const { return partition_.num_blocks(); }
  int64_t num_key_blocks() const { return partition_.num_blocks(); }

  std::span<const int32_t> key_blocks(int64_t head, int64_t query_block) const;
  int64_t num_entries() const { return static_cast<int64_t>(indices_.size()); }
  // CSR storage: row r = head * num_query_blocks() + query_block spans indices()[offsets()[r], offsets()[r + 1]).
  std::span<const int64_t> offsets() const { return offsets_; }
  std::span<const int32_t> indices() const { return indices_; }

  // For each (head, key block), the query blocks that visit it, ascending (what the backward pass walks).
  struct Transpose {
    int64_t num_key_blocks = 0;
    std::vector<int64_t> offsets;  // heads * num_key_blocks + 1
    std::vector<int32_t> indices;
    std::span<const int32_t> query_blocks(int64_t head, int64_t key_block) const;
  };
  Transpose transpose() const;

  // Exact skipped-pair accounting: block sizes come from the partition (partial tiles, text included).
  SparsityReport sparsity() const;
  // Fraction of this query block's possible keys (all tokens) that it visits.
  double density(int64_t head, int64_t query_block) const;
  // True if key token `key` is visited by query token `query` (natural indices) for `head`.
  bool visits(int64_t head, int64_t query, int64_t key) const;

 private:
  BlockPartition partition_;
  int64_t heads_;
  std::vector<int64_t> offsets_;
  std::vector<int32_t> indices_;
};

// ---- builders ----

// Sliding Tile Attention: video query blocks visit the key blocks of the tiles inside their tile's clamped window,
// then every text block; text query blocks visit every block. `windows` holds one window per head (validated
// against the grid; the argument name in errors is "windows[h]").
BlockPlan build_sta_plan(const BlockPartition& partition, std::span<const Window> windows);

// The per-head window table of a call: `windows` holds 0 entries (dense: the full grid for every head), 1 (shared by
// every head) or q_heads; anything else throws ArgumentError naming "windows".
std::vector<Window> per_head_windows(const Extent3& grid, std::span<const Window> windows, int64_t q_heads);

// Every query block visits every key block.
BlockPlan build_dense_plan(const BlockPartition& partition, int64_t heads);

// A user block mask: visits(head, query_block, key_block) decides; ascending key-block order.
BlockPlan build_block_mask_plan(const BlockPartition& partition, int64_t heads,
                                const std::function<bool(int64_t, int64_t, int64_t)>& visits);

}  // namespace tileattn
TILEATTN_PUBLIC_END

// JSON and SVG views of tile-level plans (see plan_io.hpp).
#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "tileattn/error.hpp"
#include "tileattn/plan_io.hpp"

namespace tileattn {
namespace {

using nlohmann::json;

void require_tile_level(const BlockPlan& plan) {
  const BlockPartition& p = plan.partition();
  if (p.frames_per_block() != p.geometry().tile().t)
    throw_argument_error("plan", fmt::format("tile-level views need whole-tile blocks (frames_per_block = {}), got {}",
                                             p.geometry().tile().t, p.frames_per_block()));
}

json coord(const Extent3& c) { return json::array({c.t, c.h, c.w}); }

std::string xml_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '&') out += "&amp;";
    else if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else out += c;
  }
  return out;
}

json head_object(const BlockPlan& plan, int64_t head, double sparsity) {
  const BlockPartition& p = plan.partition();
  const VideoGeometry& g = p.geometry();
  json tiles = json::array();
  for (int64_t tile = 0; tile < g.num_tiles(); ++tile) {
    json keys = json::array();
    for (int32_t kb : plan.key_blocks(head, p.video_block_id(tile, 0)))
      if (kb < p.num_video_blocks()) keys.push_back(coord(g.tile_coord(kb / p.blocks_per_tile())));
    tiles.push_back({{"tile", coord(g.tile_coord(tile))}, {"keys", std::move(keys)}});
  }
  return {{"grid", coord(g.grid())}, {"sparsity", sparsity}, {"query_tiles", std::move(tiles)}};
}

}  // namespace

std::string tile_plan_json(const BlockPlan& plan, bool per_head_objects) {
  require_tile_level(plan);
  SparsityReport s = plan.sparsity();
  if (!per_head_objects) {
    if (plan.heads() != 1)
      throw_argument_error("per_head_objects", fmt::format("a plan of {} heads needs per-head objects", plan.heads()));
    return head_object(plan, 0, s.total).dump();
  }
  json heads = json::array();
  for (int64_t h = 0; h < plan.heads(); ++h) heads.push_back(head_object(plan, h, s.per_head[h]));
  json doc = {{"grid", coord(plan.partition().geometry().grid())}, {"sparsity", s.total}, {"heads", heads}};
  return doc.dump();
}

std::string tile_plan_svg(const BlockPlan& plan, int64_t head, const std::string& title) {
  require_tile_level(plan);
  const BlockPartition& p = plan.partition();
  const int64_t nv = p.num_video_blocks(), nt = p.num_text_blocks(), n = nv + nt;
  const double cell = std::clamp(720.0 / static_cast<double>(std::max<int64_t>(n, 1)), 1.0, 24.0);
  const double margin = 40, side = cell * static_cast<double>(n);
  std::string out = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0:.0f}\" height=\"{1:.0f}\" viewBox=\"0 0 {0:.0f} {1:.0f}\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"20\" font-family=\"sans-serif\" font-size=\"13\">{3}</text>\n"
      "<text x=\"{2}\" y=\"{4:.0f}\" font-family=\"sans-serif\" font-size=\"11\">key tiles &#8594; (text last)</text>\n"
      "<g transform=\"translate({2},{2})\">\n<rect width=\"{5:.2f}\" height=\"{5:.2f}\" fill=\"#f4f4f4\" "
      "stroke=\"#999\" stroke-width=\"0.5\"/>\n",
      side + 2 * margin, side + 2 * margin, margin, xml_escape(title), side + margin + 28, side);
  auto fill_of = [&](int64_t q, int64_t k) { return q >= nv || k >= nv ? "#e07b39" : "#2b6cb0"; };
  for (int64_t q = 0; q < n; ++q) {
    std::vector<char> on(n, 0);
    for (int32_t k : plan.key_blocks(head, q)) on[k] = 1;
    for (int64_t k = 0; k < n;) {  // one rectangle per run of visited blocks of one colour
      if (!on[k]) {
        ++k;
        continue;
      }
      int64_t end = k;
      while (end < n && on[end] && (end < nv) == (k < nv)) ++end;
      out += fmt::format("<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"{}\"/>\n",
                         cell * k, cell * q, cell * (end - k), cell, fill_of(q, k));
      k = end;
    }
  }
  if (nt > 0)
    out += fmt::format("<line x1=\"{0:.2f}\" y1=\"0\" x2=\"{0:.2f}\" y2=\"{1:.2f}\" stroke=\"#333\" stroke-width=\"0.5\"/>\n"
                       "<line x1=\"0\" y1=\"{0:.2f}\" x2=\"{1:.2f}\" y2=\"{0:.2f}\" stroke=\"#333\" stroke-width=\"0.5\"/>\n",
                       cell * nv, side);
  out += "</g>\n</svg>\n";
  return out;
}

}  // namespace tileattn

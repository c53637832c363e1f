// tileattn plan: the STA plan of a shape/tile/window as a summary, a JSON file other tools can check, or an SVG map.
#include <fmt/format.h>

#include <fstream>

#include "commands.hpp"
#include "tileattn/detail/output_files.hpp"
#include "tileattn/error.hpp"
#include "tileattn/mask_strategy.hpp"
#include "tileattn/plan.hpp"
#include "tileattn/plan_io.hpp"

namespace tileattn::cli {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find(',', start), text.size());
    parts.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

std::vector<Window> parse_window_list(const std::string& text, const std::string& argument) {
  std::vector<Window> out;
  for (const std::string& part : split_list(text)) out.push_back(parse_extent3(part, argument));
  return out;
}

std::string window_label(const Window& w, const Extent3& grid) { return w == grid ? "dense" : to_string(w); }

namespace {

struct PlanOptions {
  std::string shape = "30x48x80", tile = "6x8x8", window = "3x3x3";
  int64_t heads = 0, text = 0;
  std::string json_path, svg_path, strategy_path;
  int64_t step = 0, layer = 0, svg_head = 0;
};

int run_plan(const PlanOptions& o, const CLI::App& cmd) {
  const Extent3 video = parse_extent3(o.shape, "--shape");
  const Extent3 tile = parse_extent3(o.tile, "--tile");
  if (o.text < 0) throw_argument_error("--text", fmt::format("must be >= 0, got {}", o.text));
  if (o.heads < 0 || o.heads > limits::kMaxHeads)
    throw_argument_error("--heads", fmt::format("must be in [0, {}] (limits::kMaxHeads; 0: one per --window), got {}",
                                                limits::kMaxHeads, o.heads));
  if (o.step < 0) throw_argument_error("--step", fmt::format("must be >= 0, got {}", o.step));
  if (o.layer < 0) throw_argument_error("--layer", fmt::format("must be >= 0, got {}", o.layer));
  const VideoGeometry geo = cli_geometry(video, tile, o.text);
  std::vector<Window> windows;
  if (!o.strategy_path.empty()) {
    if (cmd.count("--window")) throw_argument_error("--strategy", "give either --window or --strategy, not both");
    if (o.heads < 1) throw_argument_error("--heads", "--strategy needs --heads N (the heads of the layer)");
    MaskStrategy s = read_mask_strategy(o.strategy_path);
    for (int64_t h = 0; h < o.heads; ++h) {
      auto w = s.window_for(o.step, o.layer, h);
      windows.push_back(w ? *w : geo.grid());  // no window: dense
    }
  } else {
    windows = parse_window_list(o.window, "--window");
    if (static_cast<int64_t>(windows.size()) > limits::kMaxHeads)
      throw_argument_error("--window", fmt::format("{} windows, more than {} heads (limits::kMaxHeads)", windows.size(),
                                                   limits::kMaxHeads));
    if (windows.size() == 1 && o.heads > 1) windows.assign(o.heads, windows[0]);
    if (o.heads > 0 && static_cast<int64_t>(windows.size()) != o.heads)
      throw_argument_error("--heads", fmt::format("{} heads but {} windows in --window", o.heads, windows.size()));
  }
  for (size_t h = 0; h < windows.size(); ++h)
    validate_window(windows[h], geo.grid(), windows.size() == 1 ? std::string("--window")
                                                                : fmt::format("--window (head {})", h));
  if (o.svg_head < 0 || o.svg_head >= static_cast<int64_t>(windows.size()))
    throw_argument_error("--svg-head", fmt::format("must be in [0, {}), got {}", windows.size(), o.svg_head));

  const BlockPlan plan = with_flag("--shape, --text, --window or --heads",
                                   [&] { return build_sta_plan(BlockPartition(geo), windows); });
  const SparsityReport sparsity = plan.sparsity();
  fmt::print("video {} tokens={} tile {} -> grid {} ({} tiles{}), text {}\n", to_string(video), geo.num_video_tokens(),
             to_string(tile), to_string(geo.grid()), geo.num_tiles(), geo.tiles_exact() ? "" : ", edge tiles partial",
             o.text);
  for (size_t first = 0; first < windows.size();) {  // one line per run of heads with the same window
    size_t last = first;
    while (last + 1 < windows.size() && windows[last + 1] == windows[first]) ++last;
    const Window& w = windows[first];
    fmt::print("{:<12} window {} = {}x{}x{} tokens: each query tile visits {} of {} key tiles; sparsity {:.4f}\n",
               first == last ? fmt::format("head {}", first) : fmt::format("heads {}-{}", first, last), to_string(w),
               w.t * tile.t, w.h * tile.h, w.w * tile.w, w.volume(), geo.num_tiles(), sparsity.per_head[first]);
    first = last + 1;
  }
  fmt::print("total sparsity {:.4f} (skipped query-key pairs / all pairs, text included): {} of {} pairs visited\n",
             sparsity.total, sparsity.visited_pairs, sparsity.total_pairs);
  // Both outputs staged, then moved into place together: a failed write leaves neither behind.
  detail::OutputFiles files;
  if (!o.json_path.empty())
    files.stage_text(o.json_path, tile_plan_json(plan, windows.size() > 1 || o.heads > 0) + "\n", "--json");
  if (!o.svg_path.empty()) {
    const std::string title = fmt::format("STA plan: video {} tile {} window {} (head {}), text {}, sparsity {:.3f}",
                                          to_string(video), to_string(tile), to_string(windows[o.svg_head]),
                                          o.svg_head, o.text, sparsity.per_head[o.svg_head]);
    files.stage_text(o.svg_path, tile_plan_svg(plan, o.svg_head, title), "--svg");
  }
  files.commit();
  if (!o.json_path.empty()) fmt::print("wrote {}\n", o.json_path);
  if (!o.svg_path.empty()) fmt::print("wrote {}\n", o.svg_path);
  return 0;
}

}  // namespace

Action add_plan_command(CLI::App& app) {
  auto o = std::make_shared<PlanOptions>();
  CLI::App* cmd = app.add_subcommand("plan", "Print (and export) the Sliding Tile Attention plan of a shape");
  cmd->add_option("--shape", o->shape, "latent video T x H x W in tokens")->capture_default_str();
  cmd->add_option("--tile", o->tile, "tile shape")->capture_default_str();
  cmd->add_option("--window", o->window, "window in tiles, or a comma-separated list with one window per head")
      ->capture_default_str();
  cmd->add_option("--heads", o->heads, "number of heads (repeats a single --window)");
  cmd->add_option("--text", o->text, "text tokens appended after the video")->capture_default_str();
  cmd->add_option("--strategy", o->strategy_path, "take per-head windows from a mask-strategy file");
  cmd->add_option("--step", o->step, "denoising step for --strategy")->capture_default_str();
  cmd->add_option("--layer", o->layer, "layer for --strategy")->capture_default_str();
  cmd->add_option("--json", o->json_path, "write the tile-level plan as JSON");
  cmd->add_option("--svg", o->svg_path, "draw the tile-level attention map as SVG");
  cmd->add_option("--svg-head", o->svg_head, "head drawn by --svg")->capture_default_str();
  return [o, cmd] { return run_plan(*o, *cmd); };
}

}  // namespace tileattn::cli

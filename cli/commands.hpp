#pragma once
// The tileattn command-line tool: one function per subcommand, registered on a CLI11 app by main.cpp.
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

#include "tileattn/error.hpp"
#include "tileattn/geometry.hpp"

namespace tileattn::cli {

// The default workload everywhere: HunyuanVideo 720p.
struct Workload {
  std::string name = "hunyuan-720p";
  Extent3 video{30, 48, 80};
  Extent3 tile{6, 8, 8};
  int64_t heads = 24;
  int64_t head_dim = 128;
  int64_t text_len = 256;
  Window window{3, 3, 3};
};

// Registers a subcommand and returns the action to run when it was chosen.
using Action = std::function<int()>;
Action add_plan_command(CLI::App& app);
Action add_bench_command(CLI::App& app);
Action add_synth_command(CLI::App& app);
Action add_calibrate_command(CLI::App& app);
int run_main_job();

// Options of `tileattn bench` (defaults: the hunyuan-720p workload without text).
struct BenchOptions {
  std::string shape = "30x48x80";
  std::string tile = "6x8x8";
  std::string windows = "3x3x3,5x3x5,5x5x5,dense";
  std::string dtype = "bf16";
  std::string layout = "natural";
  int64_t batch = 1;
  int64_t heads = 24;
  int64_t kv_heads = 0;  // 0: same as heads
  int64_t head_dim = 128;
  int64_t text = 0;
  int64_t warmup = 3;
  int64_t reps = 10;
  bool backward = false;       // also time the backward (fast dQ mode), and the deterministic mode
  float amplitude = 1.0f;  // q, k, v uniform in [-amplitude, amplitude] (1.7: unit variance, like normed DiT q/k)
  std::string precision = "native";  // the STA forward's: native or fp8 (forward only, not with --backward / --fg)
  std::string json_path;
  // --fg: time the FG-Attn forward on synthetic GPU masks instead of the STA kernel (lists are comma-separated).
  bool fg = false;
  std::string fg_sparsity = "0.5,0.7,0.9";
  std::string fg_kind = "random,local";
  std::string fg_key_group = "1,16";
  std::string fg_query_block = "128";
  uint64_t fg_seed = 1;
};
int run_bench(const BenchOptions& options);

// Shared helpers.
std::vector<std::string> split_list(const std::string& text);  // "a,b,c" -> {"a", "b", "c"}
std::vector<Window> parse_window_list(const std::string& text, const std::string& argument);
std::string window_label(const Window& w, const Extent3& grid);  // "3x3x3", or "dense" for the full grid

// Runs f(); an ArgumentError it throws is re-thrown naming `flags` (the command-line flags that set the values), so
// a library error such as "windows" or "video_shape" reaches the user as the flag they typed.
template <class F>
auto with_flag(const std::string& flags, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const ArgumentError& e) {
    if (!e.argument().empty() && e.argument().front() == '-') throw;  // already a flag
    throw ArgumentError(flags, e.what());
  }
}
// The geometry of --shape/--tile/--text (or the command's own spelling of them), errors naming those flags.
struct GeometryFlags {
  const char* video = "--shape";
  const char* tile = "--tile";
  const char* text = "--text";
};
inline VideoGeometry cli_geometry(const Extent3& video, const Extent3& tile, int64_t text, GeometryFlags flags = {}) {
  try {
    return VideoGeometry(video, tile, text);
  } catch (const ArgumentError& e) {
    const std::string& a = e.argument();
    throw ArgumentError(a == "tile" ? flags.tile : a == "text_len" ? flags.text : flags.video, e.what());
  }
}

}  // namespace tileattn::cli

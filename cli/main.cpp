// tileattn: sparse attention for video diffusion transformers. With no arguments, runs the main job on the
// hunyuan-720p workload (see cmd_main_job.cpp); subcommands: plan, bench, synth, calibrate.
#include <fmt/format.h>

#include "commands.hpp"
#include "tileattn/error.hpp"

int main(int argc, char** argv) {
  CLI::App app{"tileattn: Sliding Tile Attention and fine-grained sparse attention for video DiTs (Hopper)"};
  app.set_version_flag("--version", "tileattn 0.1.0");
  app.require_subcommand(0, 1);
  auto plan = tileattn::cli::add_plan_command(app);
  auto bench = tileattn::cli::add_bench_command(app);
  auto synth = tileattn::cli::add_synth_command(app);
  auto calibrate = tileattn::cli::add_calibrate_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every bad command line (CLI11 has its own codes) is bad input: 2.
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    if (app.got_subcommand("plan")) return plan();
    if (app.got_subcommand("bench")) return bench();
    if (app.got_subcommand("synth")) return synth();
    if (app.got_subcommand("calibrate")) return calibrate();
    return tileattn::cli::run_main_job();
  } catch (const tileattn::Error& e) {
    fmt::print(stderr, "tileattn: error: {}\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {  // sizes are bounded by the limits (docs/LIMITS.md); this is the input's size
    fmt::print(stderr, "tileattn: error: not enough memory for this input (std::bad_alloc); reduce the sizes given "
                       "(see docs/LIMITS.md)\n");
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "tileattn: internal error: {}\n", e.what());
    return 3;
  }
}

// Calibration outputs: the mask strategy in both formats, report.json, report.md and the window heatmap (SVG).
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "tileattn/calibration.hpp"
#include "tileattn/detail/output_files.hpp"
#include "tileattn/error.hpp"

namespace tileattn {
namespace {

using nlohmann::json;

json triple(const Extent3& e) { return json::array({e.t, e.h, e.w}); }

std::string label(const CalibrationResult& r, int c) {
  const Window& w = r.scores.candidates[c];
  return w == r.scores.geometry.grid() ? fmt::format("{} (full)", to_string(w)) : to_string(w);
}

json global_json(const CalibrationResult& r, const GlobalWindowResult& g) {
  if (g.candidate < 0) return nullptr;
  return {{"window", triple(r.scores.candidates[g.candidate])}, {"label", label(r, g.candidate)},
          {"sparsity", g.sparsity}, {"mean_error", g.mean_error}};
}

// Per (step, layer) and per layer (over steps): mean error and sparsity of the chosen windows.
struct Row {
  double error = 0, sparsity = 0;
  int64_t heads = 0;
  std::vector<int> choice;  // by head (per (step, layer) rows)
};

void add(Row& row, const CalibrationResult& r, size_t item) {
  const int c = r.solution.choice[item];
  row.error += r.scores.error[item][c];
  row.sparsity += r.scores.candidate_sparsity[c];
  ++row.heads;
  row.choice.push_back(c);
}

std::map<std::pair<int64_t, int64_t>, Row> rows_by_step_layer(const CalibrationResult& r) {
  std::map<std::pair<int64_t, int64_t>, Row> rows;
  for (size_t i = 0; i < r.scores.items.size(); ++i) add(rows[{r.scores.items[i].step, r.scores.items[i].layer}], r, i);
  return rows;
}

std::map<int64_t, Row> rows_by_layer(const CalibrationResult& r) {
  std::map<int64_t, Row> rows;
  for (size_t i = 0; i < r.scores.items.size(); ++i) add(rows[r.scores.items[i].layer], r, i);
  return rows;
}

bool target_met(const CalibrationResult& r) {
  return r.rule == CalibrationRule::argmin || r.solution.sparsity >= r.target_sparsity - 1e-12;
}

bool beats_global(const CalibrationResult& r) {
  return r.best_global_at_achieved.candidate >= 0 && r.solution.mean_error < r.best_global_at_achieved.mean_error;
}

// A colour ramp (viridis stops) over [0, 1].
std::string ramp(double x) {
  static constexpr int stops[5][3] = {{253, 231, 37}, {94, 201, 98}, {33, 145, 140}, {59, 82, 139}, {68, 1, 84}};
  x = std::clamp(x, 0.0, 1.0) * 4.0;
  const int i = std::min(3, int(x));
  const double f = x - i;
  int rgb[3];
  for (int k = 0; k < 3; ++k) rgb[k] = int(stops[i][k] + f * (stops[i + 1][k] - stops[i][k]) + 0.5);
  return fmt::format("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2]);
}

}  // namespace

std::string calibration_report_json(const CalibrationResult& r) {
  const CalibrationScores& s = r.scores;
  std::vector<int64_t> chosen(s.candidates.size(), 0);
  for (int c : r.solution.choice) ++chosen[c];
  json candidates = json::array();
  for (size_t c = 0; c < s.candidates.size(); ++c) {
    double mean = 0;
    for (const auto& row : s.error) mean += row[c];
    candidates.push_back({{"window", triple(s.candidates[c])}, {"label", label(r, int(c))},
                          {"sparsity", s.candidate_sparsity[c]}, {"mean_error", mean / double(s.error.size())},
                          {"chosen", chosen[c]}});
  }
  json step_layers = json::array();
  for (const auto& [key, row] : rows_by_step_layer(r)) {
    json windows = json::array();
    for (int c : row.choice) windows.push_back(to_string(s.candidates[c]));
    step_layers.push_back({{"step", key.first}, {"layer", key.second}, {"mean_error", row.error / double(row.heads)},
                           {"sparsity", row.sparsity / double(row.heads)}, {"windows", windows}});
  }
  json layers = json::array();
  for (const auto& [layer, row] : rows_by_layer(r))
    layers.push_back({{"layer", layer}, {"mean_error", row.error / double(row.heads)},
                      {"sparsity", row.sparsity / double(row.heads)}, {"heads", row.heads}});
  const double n = double(s.items.size());
  json doc = {
      {"rule", r.rule == CalibrationRule::budget ? "budget" : "argmin"},
      {"target_sparsity", r.rule == CalibrationRule::budget ? json(r.target_sparsity) : json(nullptr)},
      {"achieved_sparsity", r.solution.sparsity},
      {"target_met", target_met(r)},
      {"mean_error", r.solution.mean_error},
      {"total_error", r.solution.mean_error * n},
      {"best_global_at_achieved", global_json(r, r.best_global_at_achieved)},
      {"best_global_at_target", global_json(r, r.best_global_at_target)},
      {"beats_best_global", beats_global(r)},
      {"lambda", r.solution.lambda},
      {"error_lower_bound", r.rule == CalibrationRule::budget ? json(r.solution.lower_bound) : json(nullptr)},
      {"exchanges", r.solution.exchanges},
      {"device", s.device},
      {"video_shape", triple(s.geometry.video())},
      {"tile", triple(s.geometry.tile())},
      {"grid", triple(s.geometry.grid())},
      {"text_len", s.geometry.text_len()},
      {"heads", s.heads},
      {"dense_steps", s.dense_steps},
      {"calibrated_heads", s.items.size()},
      {"captures_scored", s.captures_scored},
      {"captures_skipped", s.captures_skipped},
      {"candidates", candidates},
      {"layers", layers},
      {"step_layers", step_layers},
  };
  return doc.dump(1);
}

std::string calibration_report_markdown(const CalibrationResult& r) {
  const CalibrationScores& s = r.scores;
  std::string md = "# Calibration report\n\n";
  md += fmt::format("Video {} (tile {}, grid {}), {} text tokens, {} heads; {} captures scored on the {}, {} skipped "
                    "(dense steps < {}); {} calibrated heads.\n\n",
                    to_string(s.geometry.video()), to_string(s.geometry.tile()), to_string(s.geometry.grid()),
                    s.geometry.text_len(), s.heads, s.captures_scored, s.device, s.captures_skipped, s.dense_steps,
                    s.items.size());
  md += "| | value |\n|---|---|\n";
  if (r.rule == CalibrationRule::budget) {
    md += fmt::format("| rule | budget (Lagrangian + exchange, lambda = {:.4g}, {} exchanges) |\n", r.solution.lambda,
                      r.solution.exchanges);
    md += fmt::format("| target sparsity | {:.4f} |\n", r.target_sparsity);
    md += fmt::format("| optimality | no choice meeting the target has a mean error below {:.4f} (Lagrangian bound): "
                      "the gap is at most {:.4f} |\n", r.solution.lower_bound,
                      r.solution.mean_error - r.solution.lower_bound);
  } else {
    md += "| rule | argmin (FastVideo: lowest error per head, full window excluded, no budget) |\n";
  }
  md += fmt::format("| achieved sparsity | **{:.4f}**{} |\n", r.solution.sparsity,
                    r.rule == CalibrationRule::budget ? (target_met(r) ? " (target met)" : " (TARGET MISSED)") : "");
  md += fmt::format("| mean relative L2 error | **{:.4f}** (total {:.4f} over {} heads) |\n", r.solution.mean_error,
                    r.solution.mean_error * double(s.items.size()), s.items.size());
  auto global_line = [&](const char* what, const GlobalWindowResult& g) {
    if (g.candidate < 0) return fmt::format("| {} | none of the candidates is that sparse |\n", what);
    return fmt::format("| {} | {} : sparsity {:.4f}, mean error {:.4f} |\n", what, label(r, g.candidate), g.sparsity,
                       g.mean_error);
  };
  md += global_line("best single global window, sparsity >= achieved", r.best_global_at_achieved);
  if (r.rule == CalibrationRule::budget)
    md += global_line("best single global window, sparsity >= target", r.best_global_at_target);
  if (r.best_global_at_achieved.candidate >= 0)
    md += fmt::format("| per-head windows vs best global | error {:.4f} vs {:.4f}: {} |\n", r.solution.mean_error,
                      r.best_global_at_achieved.mean_error,
                      beats_global(r) ? "per-head windows are better" : "NOT better");
  md += "\n## Candidates\n\n| window | sparsity | mean error as global window | heads chosen |\n|---|---|---|---|\n";
  std::vector<int64_t> chosen(s.candidates.size(), 0);
  for (int c : r.solution.choice) ++chosen[c];
  for (size_t c = 0; c < s.candidates.size(); ++c) {
    double mean = 0;
    for (const auto& row : s.error) mean += row[c];
    md += fmt::format("| {} | {:.4f} | {:.4f} | {} |\n", label(r, int(c)), s.candidate_sparsity[c],
                      mean / double(s.error.size()), chosen[c]);
  }
  md += "\n## Error per layer\n\n| layer | mean error | sparsity | heads |\n|---|---|---|---|\n";
  for (const auto& [layer, row] : rows_by_layer(r))
    md += fmt::format("| {} | {:.4f} | {:.4f} | {} |\n", layer, row.error / double(row.heads),
                      row.sparsity / double(row.heads), row.heads);
  md += "\n## Windows per (step, layer), by head\n\n| step | layer | windows |\n|---|---|---|\n";
  for (const auto& [key, row] : rows_by_step_layer(r)) {
    std::vector<std::string> w;
    for (int c : row.choice) w.push_back(to_string(s.candidates[c]));
    md += fmt::format("| {} | {} | {} |\n", key.first, key.second, fmt::join(w, " "));
  }
  md += "\n![chosen windows](windows_heatmap.svg)\n";
  return md;
}

std::string calibration_heatmap_svg(const CalibrationResult& r) {
  const CalibrationScores& s = r.scores;
  const auto rows = rows_by_step_layer(r);
  const double lo = *std::min_element(s.candidate_sparsity.begin(), s.candidate_sparsity.end());
  const double hi = *std::max_element(s.candidate_sparsity.begin(), s.candidate_sparsity.end());
  auto colour = [&](int c) { return ramp(hi > lo ? (s.candidate_sparsity[c] - lo) / (hi - lo) : 1.0); };
  const double cell = std::clamp(900.0 / double(s.heads), 14.0, 56.0), ch = std::min(cell, 28.0);
  const double left = 130, top = 64, width = left + cell * double(s.heads) + 20;
  const double legend_top = top + ch * double(rows.size()) + 24;
  const double height = legend_top + 22.0 * double(s.candidates.size()) + 16;
  std::string out = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0:.0f}\" height=\"{1:.0f}\" viewBox=\"0 0 {0:.0f} {1:.0f}\" "
      "font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"10\" y=\"20\" font-size=\"14\">Chosen STA windows per (step, layer) x head: sparsity {2:.3f}{3}, "
      "mean rel. L2 {4:.4f}</text>\n<text x=\"10\" y=\"38\" font-size=\"11\">video {5}, tile {6}, grid {7}; colour: "
      "window sparsity (darker = sparser)</text>\n",
      std::max(width, 840.0), height, r.solution.sparsity,
      r.rule == CalibrationRule::budget ? fmt::format(" (target {:.3f})", r.target_sparsity) : std::string(" (argmin)"),
      r.solution.mean_error, to_string(s.geometry.video()), to_string(s.geometry.tile()), to_string(s.geometry.grid()));
  const bool labels = cell >= 40;
  for (int64_t h = 0; h < s.heads; ++h)
    if (s.heads <= 32 || h % 4 == 0)
      out += fmt::format("<text x=\"{:.1f}\" y=\"{:.0f}\" font-size=\"10\" text-anchor=\"middle\">{}</text>\n",
                         left + cell * (double(h) + 0.5), top - 6, h);
  int row_index = 0;
  for (const auto& [key, row] : rows) {
    const double y = top + ch * row_index++;
    out += fmt::format("<text x=\"{:.0f}\" y=\"{:.1f}\" font-size=\"11\" text-anchor=\"end\">step {} layer {}</text>\n",
                       left - 6, y + ch * 0.7, key.first, key.second);
    for (size_t h = 0; h < row.choice.size(); ++h) {
      const int c = row.choice[h];
      out += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\" stroke=\"white\" "
                         "stroke-width=\"1\"><title>step {} layer {} head {}: {} (sparsity {:.3f}, error {:.4f})</title>"
                         "</rect>\n", left + cell * double(h), y, cell, ch, colour(c), key.first, key.second, h,
                         to_string(s.candidates[c]), s.candidate_sparsity[c],
                         s.error[size_t(row_index - 1) * size_t(s.heads) + h][c]);
      if (labels)
        out += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"9\" text-anchor=\"middle\" fill=\"{}\">{}</text>\n",
                           left + cell * (double(h) + 0.5), y + ch * 0.65,
                           (s.candidate_sparsity[c] - lo) > 0.5 * (hi - lo) ? "white" : "black",
                           to_string(s.candidates[c]));
    }
  }
  for (size_t c = 0; c < s.candidates.size(); ++c) {
    const double y = legend_top + 22.0 * double(c);
    out += fmt::format("<rect x=\"{:.0f}\" y=\"{:.0f}\" width=\"16\" height=\"16\" fill=\"{}\" stroke=\"#999\"/>\n"
                       "<text x=\"{:.0f}\" y=\"{:.0f}\" font-size=\"11\">{} : sparsity {:.3f}</text>\n",
                       left, y, colour(int(c)), left + 24, y + 12, label(r, int(c)), s.candidate_sparsity[c]);
  }
  return out + "</svg>\n";
}

std::vector<std::string> write_calibration_outputs(const CalibrationResult& r, const std::string& windows_path,
                                                   const std::string& report_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(report_dir, ec);
  if (ec) throw FileError(fmt::format("report directory '{}': cannot create it ({})", report_dir, ec.message()));
  const fs::path windows(windows_path);
  if (windows.has_parent_path()) fs::create_directories(windows.parent_path(), ec);
  if (ec) throw FileError(fmt::format("--output '{}': cannot create its directory ({})", windows_path, ec.message()));
  const std::string fastvideo = (windows.parent_path() / (windows.stem().string() + ".fastvideo.json")).string();
  const std::string report_json = (fs::path(report_dir) / "report.json").string();
  const std::string report_md = (fs::path(report_dir) / "report.md").string();
  const std::string heatmap = (fs::path(report_dir) / "windows_heatmap.svg").string();
  // All five staged first, then moved into place together: a failed write leaves none of them behind.
  detail::OutputFiles files;
  files.stage_text(windows_path, dump_mask_strategy(r.strategy, MaskStrategyFormat::tileattn) + "\n", "mask strategy");
  files.stage_text(fastvideo, dump_mask_strategy(fastvideo_strategy(r), MaskStrategyFormat::fastvideo) + "\n",
                   "mask strategy");
  files.stage_text(report_json, calibration_report_json(r) + "\n", "calibration output");
  files.stage_text(report_md, calibration_report_markdown(r), "calibration output");
  files.stage_text(heatmap, calibration_heatmap_svg(r), "calibration output");
  files.commit();
  return {windows_path, fastvideo, report_md, report_json, heatmap};
}

}  // namespace tileattn

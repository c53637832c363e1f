#include "tileattn/mask_strategy.hpp"

#include <fmt/format.h>

#include <charconv>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/input_limits.hpp"
#include "tileattn/detail/output_files.hpp"
#include "tileattn/checked.hpp"
#include "tileattn/error.hpp"

namespace tileattn {
namespace {

using nlohmann::json;
constexpr const char* kFormatName = "tileattn.mask_strategy";

[[noreturn]] void fail(const std::string& source, const std::string& key, const std::string& what) {
  if (key.empty()) throw FileError(fmt::format("mask strategy '{}': {}", source, what));
  throw FileError(fmt::format("mask strategy '{}', key '{}': {}", source, quote_truncated(key), what));
}

StrategyKey parse_key(const std::string& source, const std::string& key) {
  int64_t parts[3];
  std::string_view rest = key;
  for (int i = 0; i < 3; ++i) {
    size_t end = i < 2 ? rest.find('_') : rest.size();
    if (end == std::string_view::npos) fail(source, key, "expected '<step>_<layer>_<head>' (three integers >= 0)");
    std::string_view part = rest.substr(0, end);
    auto [ptr, ec] = std::from_chars(part.data(), part.data() + part.size(), parts[i]);
    if (part.empty() || ec != std::errc() || ptr != part.data() + part.size() || parts[i] < 0)
      fail(source, key, "expected '<step>_<layer>_<head>' (three integers >= 0)");
    rest = i < 2 ? rest.substr(end + 1) : std::string_view{};
  }
  return {parts[0], parts[1], parts[2]};
}

Extent3 parse_triple(const std::string& source, const std::string& key, const json& value, const char* what) {
  if (!value.is_array() || value.size() != 3)
    fail(source, key, fmt::format("{} must be an array of three positive integers, got {}", what, detail::brief(value)));
  int64_t v[3];
  for (int i = 0; i < 3; ++i) {
    if (!value[i].is_number_integer() || value[i].get<int64_t>() < 1)
      fail(source, key, fmt::format("{} must be an array of three positive integers, got {}", what, detail::brief(value)));
    v[i] = value[i].get<int64_t>();
  }
  return {v[0], v[1], v[2]};
}

json triple(const Extent3& e) { return json::array({e.t, e.h, e.w}); }

Precision parse_precision(const std::string& source, const std::string& key, const json& value) {
  if (value == "native") return Precision::native;
  if (value == "fp8") return Precision::fp8;
  fail(source, key, fmt::format("precision must be \"native\" or \"fp8\", got {}", detail::brief(value)));
}

const char* precision_name(Precision p) { return p == Precision::fp8 ? "fp8" : "native"; }

void parse_layer_precision(const std::string& source, const json& object, MaskStrategy& out) {
  if (!object.is_object()) fail(source, "layer_precision", "must be an object of \"<layer>\": \"native\" | \"fp8\"");
  for (const auto& [key, value] : object.items()) {
    int64_t layer = -1;
    auto [ptr, ec] = std::from_chars(key.data(), key.data() + key.size(), layer);
    if (key.empty() || ec != std::errc() || ptr != key.data() + key.size() || layer < 0)
      fail(source, "layer_precision." + key, "expected a layer index (an integer >= 0)");
    out.layer_precision[layer] = parse_precision(source, "layer_precision." + key, value);
  }
}

void parse_windows(const std::string& source, const json& object, MaskStrategy& out) {
  for (const auto& [key, value] : object.items()) {
    StrategyKey k = parse_key(source, key);
    if (out.windows.contains(k)) fail(source, key, "duplicate entry");
    out.windows.emplace(k, parse_triple(source, key, value, "window"));
  }
}

}  // namespace

std::string to_string(const StrategyKey& key) { return fmt::format("{}_{}_{}", key.step, key.layer, key.head); }

std::optional<Window> MaskStrategy::window_for(int64_t step, int64_t layer, int64_t head) const {
  if (step < dense_steps) return std::nullopt;
  if (auto it = windows.find({step, layer, head}); it != windows.end()) return it->second;
  return default_window;
}

Precision MaskStrategy::precision_for(int64_t layer) const {
  if (auto it = layer_precision.find(layer); it != layer_precision.end()) return it->second;
  return precision;
}

void MaskStrategy::validate() const {
  if (dense_steps < 0) throw_argument_error("dense_steps", fmt::format("must be >= 0, got {}", dense_steps));
  if (!geometry) return;
  const Extent3 grid = geometry->grid();
  for (const auto& [key, window] : windows) validate_window(window, grid, fmt::format("windows[{}]", to_string(key)));
  if (default_window) validate_window(*default_window, grid, "default");
}

MaskStrategy parse_mask_strategy(const std::string& text, const std::string& source) {
  const json doc = detail::parse_json_bounded(text, fmt::format("mask strategy '{}'", source));
  if (!doc.is_object()) fail(source, "", "the top level must be a JSON object");
  MaskStrategy out;
  if (!doc.contains("format")) {  // FastVideo: a flat {"step_layer_head": [wt, wh, ww]} object
    parse_windows(source, doc, out);
    return out;
  }
  if (doc["format"] != kFormatName)
    fail(source, "format", fmt::format("expected \"{}\", got {}", kFormatName, detail::brief(doc["format"])));
  if (!doc.contains("version") || doc["version"] != 1)
    fail(source, "version", fmt::format("expected 1, got {}", detail::brief(doc.value("version", json()))));
  static const std::set<std::string> kKnown = {"format", "version", "video_shape", "tile", "text_len",
                                               "default", "dense_steps", "windows", "precision",
                                               "layer_precision"};
  for (const auto& [key, value] : doc.items())
    if (!kKnown.contains(key)) fail(source, key, "unknown key");
  const bool has_shape = doc.contains("video_shape"), has_tile = doc.contains("tile");
  if (has_shape != has_tile) fail(source, has_shape ? "tile" : "video_shape", "video_shape and tile go together");
  if (has_shape) {
    int64_t text_len = 0;
    if (doc.contains("text_len")) {
      if (!doc["text_len"].is_number_integer() || doc["text_len"].get<int64_t>() < 0)
        fail(source, "text_len", fmt::format("must be an integer >= 0, got {}", detail::brief(doc["text_len"])));
      text_len = doc["text_len"].get<int64_t>();
    }
    try {
      out.geometry.emplace(parse_triple(source, "video_shape", doc["video_shape"], "video_shape"),
                           parse_triple(source, "tile", doc["tile"], "tile"), text_len);
    } catch (const ArgumentError& e) {
      fail(source, "video_shape", e.what());
    }
  }
  if (doc.contains("default") && !doc["default"].is_null())
    out.default_window = parse_triple(source, "default", doc["default"], "default");
  if (doc.contains("dense_steps")) {
    if (!doc["dense_steps"].is_number_integer() || doc["dense_steps"].get<int64_t>() < 0)
      fail(source, "dense_steps", fmt::format("must be an integer >= 0, got {}", detail::brief(doc["dense_steps"])));
    out.dense_steps = doc["dense_steps"].get<int64_t>();
  }
  if (doc.contains("windows")) {
    if (!doc["windows"].is_object()) fail(source, "windows", "must be an object of \"step_layer_head\": [wt, wh, ww]");
    parse_windows(source, doc["windows"], out);
  }
  if (doc.contains("precision")) out.precision = parse_precision(source, "precision", doc["precision"]);
  if (doc.contains("layer_precision")) parse_layer_precision(source, doc["layer_precision"], out);
  try {
    out.validate();
  } catch (const ArgumentError& e) {
    fail(source, e.argument(), e.what());
  }
  return out;
}

MaskStrategy read_mask_strategy(const std::string& path) {
  return parse_mask_strategy(detail::read_file_bounded(path, limits::kMaxStrategyBytes, "limits::kMaxStrategyBytes",
                                                      fmt::format("mask strategy '{}'", path)),
                             path);
}

std::string dump_mask_strategy(const MaskStrategy& s, MaskStrategyFormat format) {
  json windows = json::object();
  for (const auto& [key, window] : s.windows) windows[to_string(key)] = triple(window);
  if (format == MaskStrategyFormat::fastvideo) return windows.dump(1);
  json doc = {{"format", kFormatName}, {"version", 1}};
  if (s.geometry) {
    doc["video_shape"] = triple(s.geometry->video());
    doc["tile"] = triple(s.geometry->tile());
    doc["text_len"] = s.geometry->text_len();
  }
  doc["default"] = s.default_window ? triple(*s.default_window) : json();
  doc["dense_steps"] = s.dense_steps;
  doc["windows"] = windows;
  // Written only when some layer is not native, so that files without FP8 stay readable by older libraries.
  if (s.precision != Precision::native) doc["precision"] = precision_name(s.precision);
  if (!s.layer_precision.empty()) {
    json layers = json::object();
    for (const auto& [layer, p] : s.layer_precision) layers[std::to_string(layer)] = precision_name(p);
    doc["layer_precision"] = layers;
  }
  return doc.dump(1);
}

void write_mask_strategy(const MaskStrategy& s, const std::string& path, MaskStrategyFormat format) {
  if (format == MaskStrategyFormat::fastvideo &&
      (s.default_window || s.geometry || s.dense_steps != 0 || s.precision != Precision::native ||
       !s.layer_precision.empty()))
    throw_argument_error("format", "FastVideo's format has no place for default, geometry, dense_steps or "
                                   "precision; use the tileattn format");
  detail::write_text_file_atomic(path, dump_mask_strategy(s, format) + "\n", "mask strategy");
}

}  // namespace tileattn

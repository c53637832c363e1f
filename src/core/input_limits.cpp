#include "core/input_limits.hpp"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <set>
#include <vector>

#include "tileattn/checked.hpp"
#include "tileattn/error.hpp"

namespace tileattn::detail {
namespace {

using nlohmann::json;

// A SAX pass that stops at the first nesting level over the limit or the first non-finite number.
struct DepthCheck : nlohmann::json_sax<json> {
  int64_t depth = 0;
  std::string problem;  // empty: fine
  std::vector<std::set<std::string>> keys;  // of each open object (an array holds an unused empty set)

  bool open() {
    keys.emplace_back();
    if (++depth <= limits::kMaxJsonDepth) return true;
    problem = fmt::format("JSON nested deeper than {} levels (limits::kMaxJsonDepth)", limits::kMaxJsonDepth);
    return false;
  }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t v, const string_t& text) override {
    if (std::isfinite(v)) return true;
    problem = fmt::format("number {} is out of range (not a finite double)", quote_truncated(text));
    return false;
  }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return open(); }
  bool key(string_t& k) override {
    if (keys.back().insert(k).second) return true;
    problem = fmt::format("duplicate key '{}'", quote_truncated(k));
    return false;
  }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override { return open(); }
  bool end_array() override { return close(); }
  bool close() {
    keys.pop_back();
    --depth;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    problem = fmt::format("not valid JSON ({})", quote_truncated(e.what()));
    return false;
  }
};

}  // namespace

std::string read_file_bounded(const std::string& path, int64_t max_bytes, const char* limit_name,
                              const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileError(fmt::format("{}: cannot open the file", what));
  std::string text;
  char buffer[1 << 16];
  while (in) {
    in.read(buffer, sizeof buffer);
    const std::streamsize got = in.gcount();
    if (static_cast<int64_t>(text.size()) + got > max_bytes)
      throw FileError(fmt::format("{}: the file is larger than {} bytes ({})", what, max_bytes, limit_name));
    text.append(buffer, static_cast<size_t>(got));
  }
  if (in.bad()) throw FileError(fmt::format("{}: read failed", what));
  return text;
}

json parse_json_bounded(std::string_view text, const std::string& what) {
  DepthCheck check;
  if (!json::sax_parse(text, &check) || !check.problem.empty())
    throw FileError(fmt::format("{}: {}", what, check.problem.empty() ? "not valid JSON" : check.problem));
  try {
    return json::parse(text);
  } catch (const json::exception& e) {  // not expected after the SAX pass; still an input error, never "internal"
    throw FileError(fmt::format("{}: not valid JSON ({})", what, quote_truncated(e.what())));
  }
}

std::string brief(const json& value) { return quote_truncated(value.dump()); }

}  // namespace tileattn::detail

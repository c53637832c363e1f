#pragma once
// Reading untrusted files: bounded reads, depth-limited and number-checked JSON, bounded quoting of user values.
// Each throws FileError whose message starts with `what` (e.g. "mask strategy 'x.json'").
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace tileattn::detail {

// The whole file, refusing more than `max_bytes` (named `limit_name` in the message) without reading further: works
// on pipes and devices (/dev/zero) too.
std::string read_file_bounded(const std::string& path, int64_t max_bytes, const char* limit_name,
                              const std::string& what);

// Parses JSON, refusing nesting deeper than limits::kMaxJsonDepth and numbers that are not finite doubles (1e400),
// before building the document (so no later recursion, dump() or destructor can overflow the stack).
nlohmann::json parse_json_bounded(std::string_view text, const std::string& what);

// A JSON value for an error message: dump() cut to limits::kMaxMessageValueChars (the document's depth is bounded).
std::string brief(const nlohmann::json& value);

}  // namespace tileattn::detail

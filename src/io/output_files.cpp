#include "tileattn/detail/output_files.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "tileattn/error.hpp"

namespace tileattn::detail {
namespace {

namespace fs = std::filesystem;

// The target exists and is not a regular file (or a link to one): write in place, never rename over it.
bool write_in_place(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  return !ec && fs::exists(st) && !fs::is_regular_file(st);
}

std::string temporary_for(const std::string& path) {
  static std::atomic<unsigned> counter{0};
  const fs::path p(path);
  return (p.parent_path() / fmt::format(".{}.tmp-{}-{}", p.filename().string(), ::getpid(), counter++)).string();
}

void write_checked(const std::string& file, const std::function<void(std::ostream&)>& write, const std::string& what,
                   const std::string& target) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  if (!out) throw FileError(fmt::format("{} '{}': cannot open the file for writing ({})", what, target,
                                        std::strerror(errno)));
  write(out);
  out.flush();
  if (!out) throw FileError(fmt::format("{} '{}': write failed ({})", what, target, std::strerror(errno)));
  out.close();
  if (!out) throw FileError(fmt::format("{} '{}': write failed on close ({})", what, target, std::strerror(errno)));
}

}  // namespace

OutputFiles::~OutputFiles() {
  for (const Staged& s : staged_)
    if (!s.temporary.empty()) std::remove(s.temporary.c_str());
}

void OutputFiles::stage(const std::string& path, const std::function<void(std::ostream&)>& write,
                        const std::string& what) {
  if (path.empty()) throw FileError(fmt::format("{}: the path is empty", what));
  if (write_in_place(path)) {
    write_checked(path, write, what, path);
    staged_.push_back({path, "", what});
    return;
  }
  Staged s{path, temporary_for(path), what};
  try {
    write_checked(s.temporary, write, what, path);
  } catch (...) {
    std::remove(s.temporary.c_str());
    throw;
  }
  staged_.push_back(std::move(s));
}

void OutputFiles::stage_text(const std::string& path, const std::string& text, const std::string& what) {
  stage(path, [&](std::ostream& out) { out.write(text.data(), static_cast<std::streamsize>(text.size())); }, what);
}

void OutputFiles::commit() {
  for (Staged& s : staged_) {
    if (s.temporary.empty()) continue;
    std::error_code ec;
    fs::rename(s.temporary, s.target, ec);
    if (ec) throw FileError(fmt::format("{} '{}': cannot move the finished file into place ({})", s.what, s.target,
                                        ec.message()));
    s.temporary.clear();
  }
  staged_.clear();
}

void write_text_file_atomic(const std::string& path, const std::string& text, const std::string& what) {
  OutputFiles files;
  files.stage_text(path, text, what);
  files.commit();
}

}  // namespace tileattn::detail

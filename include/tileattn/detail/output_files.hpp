#pragma once
// Output files written atomically: each staged into a temporary file next to its target (written, flushed and closed
// with every error checked), and renamed over the targets only once all of them are complete. On any error nothing
// new is left behind: the temporaries are removed and no target is touched. A target that exists and is not a
// regular file (a device such as /dev/full or /dev/stdout, a FIFO) is written in place instead of renamed over, with
// the same checks (its write errors still fail the call).
#include <functional>
#include <ostream>
#include <string>
#include <vector>
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {
namespace detail {

class OutputFiles {
 public:
  OutputFiles() = default;
  OutputFiles(const OutputFiles&) = delete;
  OutputFiles& operator=(const OutputFiles&) = delete;
  ~OutputFiles();  // removes the temporaries of an uncommitted set

  // Writes `path`'s content now (to its temporary); throws FileError "<what> '<path>': ..." on any error.
  void stage(const std::string& path, const std::function<void(std::ostream&)>& write, const std::string& what);
  void stage_text(const std::string& path, const std::string& text, const std::string& what);
  // Renames every staged file onto its target; throws FileError (and removes what is left) on failure.
  void commit();

 private:
  struct Staged {
    std::string target, temporary, what;
  };
  std::vector<Staged> staged_;
};

// One file: stage + commit.
void write_text_file_atomic(const std::string& path, const std::string& text, const std::string& what);

}  // namespace detail
}  // namespace tileattn
TILEATTN_PUBLIC_END

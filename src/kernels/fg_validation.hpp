#pragma once
// PLACEHOLDER (branch fg-py): the real host-side validation of fg_forward's arguments is written with the FG kernel
// and replaces this file and fg_validation.cpp on merge. It exists so that the no-CUDA fallbacks
// (fg_forward_unavailable.cpp) compile and reject obviously bad input.
#include "tileattn/fg.hpp"

namespace tileattn {

// Throws ArgumentError naming the offending argument.
void validate_fg_forward_args(const FgForwardArgs& args);

}  // namespace tileattn

#pragma once
// Checks shared by the CPU dynamic-mask oracle and the GPU builder's argument validation.
#include "tileattn/dynamic_mask.hpp"

namespace tileattn::detail {

// ColumnSelection's values for a plan of `shape`: p, k, threshold, target_sparsity (each only for its rule) and
// text_len; ArgumentError naming the field. The window is the caller's to check.
void check_selection_values(const ColumnPlanShape& shape, const ColumnSelection& selection);

}  // namespace tileattn::detail

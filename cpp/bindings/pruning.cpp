// Bindings of the pruning kernels (filled in by the co-permutation work).
#include <nanobind/nanobind.h>

namespace nb = nanobind;

void bind_pruning(nb::module_& m) { (void)m; }

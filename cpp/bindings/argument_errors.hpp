// Wrong argument types raise fheprune.errors.InputTypeError (see argument_errors.cpp).
#pragma once

#include <nanobind/nanobind.h>

// Gives every function, method, constructor and property setter bound in `m` so far a last
// overload that refuses the call with InputTypeError. Call it once, after all bindings.
void reject_mismatched_arguments(nanobind::module_& m);

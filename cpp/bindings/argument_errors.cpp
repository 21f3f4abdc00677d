// Wrong argument types become the package's typed error.
//
// When no overload of a bound function accepts the arguments, nanobind raises a bare
// TypeError. The package promises one root exception (fheprune.errors.FhepruneError), so
// every function, method, constructor and property setter of the module gets one more
// overload, registered last, that accepts anything and raises fheprune.errors.InputTypeError
// (a FhepruneError and a TypeError) naming the call, the argument types it got and the
// signatures it accepts.
//
// nanobind tries overloads in two passes: first every overload without implicit conversions,
// then every overload with them, each pass in registration order. The catch-all must not win
// the first pass, or a call that needs a conversion (an int for a float, a list for an array)
// would be refused before the real overload gets its second try. Its keyword-only marker
// parameter therefore binds only in the converting pass (see SecondPass below).
#include "argument_errors.hpp"

#include <cctype>
#include <deque>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace nb = nanobind;

namespace {

// Binds (from its default value) only when nanobind allows conversions, i.e. in the second
// pass, after every real overload has had both of its tries.
struct SecondPass {};

}  // namespace

namespace nanobind::detail {
template <>
struct type_caster<SecondPass> {
  NB_TYPE_CASTER(SecondPass, const_name("object"))
  bool from_python(handle, uint8_t flags, cleanup_list*) noexcept {
    return (flags & static_cast<uint8_t>(cast_flags::convert)) != 0;
  }
  static handle from_cpp(const SecondPass&, rv_policy, cleanup_list*) noexcept {
    return none().release();
  }
};
}  // namespace nanobind::detail

namespace {

// nanobind keeps the name pointer it is given; these live as long as the module.
const char* stable_name(const std::string& name) {
  static std::deque<std::string> names;
  return names.emplace_back(name).c_str();
}

// "fheprune._core.Parameters" reads better as "Parameters".
std::string without_module_prefix(std::string text) {
  const std::string prefix = "fheprune._core.";
  for (std::size_t at = text.find(prefix); at != std::string::npos; at = text.find(prefix, at)) {
    text.erase(at, prefix.size());
  }
  return text;
}

std::string type_of(nb::handle value) {
  return without_module_prefix(nb::type_name(value.type()).c_str());
}

// "(Context, int, threads=str)": what the call passed.
std::string describe_call(const nb::args& args, const nb::kwargs& kwargs) {
  std::string out = "(";
  bool first = true;
  for (std::size_t i = 0; i < args.size(); ++i) {
    out += (first ? "" : ", ") + type_of(args[i]);
    first = false;
  }
  for (auto [key, value] : kwargs) {
    out += (first ? "" : ", ") + std::string(nb::str(key).c_str()) + "=" + type_of(value);
    first = false;
  }
  return out + ")";
}

// The accepted signatures, one per line, from nanobind's own rendering of the overloads.
std::string accepted_signatures(nb::handle function) {
  std::string out;
  for (nb::handle entry : function.attr("__nb_signature__")) {
    // (text, docstring, defaults): the text holds \<i> where default value i goes.
    const std::string text = nb::str(entry[0]).c_str();
    const nb::handle defaults = entry[2];
    std::string sig;
    for (std::size_t i = 0; i < text.size(); ++i) {
      const bool escape = text[i] == '\\' && i + 1 < text.size() &&
                          std::isdigit(static_cast<unsigned char>(text[i + 1]));
      if (!escape) {
        sig += text[i];
        continue;
      }
      std::size_t index = 0;
      while (i + 1 < text.size() && std::isdigit(static_cast<unsigned char>(text[i + 1]))) {
        index = index * 10 + static_cast<std::size_t>(text[++i] - '0');
      }
      const bool known = !defaults.is_none() && index < nb::len(defaults);
      sig += known ? nb::repr(defaults[index]).c_str() : "...";
    }
    if (sig.rfind("def ", 0) == 0) sig.erase(0, 4);
    out += "\n    " + without_module_prefix(sig);
  }
  return out;
}

[[noreturn]] void raise_type_error(const nb::object& error_type, const std::string& message) {
  PyErr_SetString(error_type.ptr(), message.c_str());
  throw nb::python_error();
}

struct Refusal {
  nb::object error_type;  // fheprune.errors.InputTypeError
  std::string qualified_name;
  std::string signatures;

  [[noreturn]] void raise(const nb::args& args, const nb::kwargs& kwargs) const {
    raise_type_error(error_type, qualified_name + "(): arguments of the wrong type " +
                                     describe_call(args, kwargs) +
                                     "; accepted:" + signatures);
  }
};

// Appends the catch-all overload to `scope.name` (a function or method made by nanobind).
void add_catch_all(nb::handle scope, const std::string& name, const std::string& qualified_name,
                   bool is_method, const nb::object& error_type) {
  const nb::object function = nb::getattr(scope, name.c_str());
  Refusal refusal{error_type, qualified_name, accepted_signatures(function)};
  if (is_method) {
    // The instance (or, for __init__, the instance under construction) is not reported.
    auto catch_all = [refusal](nb::handle, nb::args args, SecondPass, nb::kwargs kwargs) {
      refusal.raise(args, kwargs);
    };
    nb::cpp_function_def(std::move(catch_all), nb::scope(scope), nb::name(stable_name(name)),
                         nb::is_method(), nb::arg("args"),
                         nb::arg("_second_pass") = nb::int_(0), nb::arg("kwargs"));
  } else {
    auto catch_all = [refusal](nb::args args, SecondPass, nb::kwargs kwargs) {
      refusal.raise(args, kwargs);
    };
    nb::cpp_function_def(std::move(catch_all), nb::scope(scope), nb::name(stable_name(name)),
                         nb::arg("args"), nb::arg("_second_pass") = nb::int_(0),
                         nb::arg("kwargs"));
  }
}

// A property whose setter refuses wrong types with the typed error (getters take no
// argument a caller could get wrong).
nb::object checked_property(nb::handle property, const std::string& qualified_name,
                            const nb::object& error_type) {
  const nb::object setter = property.attr("fset");
  const std::string signatures = accepted_signatures(setter);
  auto checked_setter = [setter, qualified_name, signatures, error_type](nb::handle self,
                                                                          nb::handle value) {
    try {
      setter(self, value);
    } catch (nb::python_error& e) {
      // Only the binding itself raises TypeError here: the engine raises its own errors.
      if (!e.matches(PyExc_TypeError) || e.matches(error_type)) throw;
      raise_type_error(error_type, qualified_name + ": a value of the wrong type (" +
                                       type_of(value) + "); accepted:" + signatures);
    }
  };
  return nb::module_::import_("builtins")
      .attr("property")(property.attr("fget"), nb::cpp_function(std::move(checked_setter)),
                        nb::none(), property.attr("__doc__"));
}

// A copy of a namespace (a class's mapping proxy or a module's dictionary).
nb::dict as_dict(nb::handle mapping) {
  return nb::borrow<nb::dict>(nb::module_::import_("builtins").attr("dict")(mapping));
}

bool is_nanobind_function(nb::handle value, const char* kind) {
  return std::string(nb::type_name(value.type()).c_str()) == std::string("nanobind.") + kind;
}

// One bound function of the module: where it lives and how to name it in messages.
struct BoundFunction {
  nb::handle scope;       // the module or the class
  std::string name;       // the attribute name
  std::string qualified;  // "save", "Evaluator.add", "Context" for a constructor
  bool is_method;
  nb::object function;
};

// Whether a rendered signature returns `type_path` ("fheprune._core.Plaintext"), alone or
// inside a container.
bool returns(const nb::object& function, const std::string& type_path) {
  for (nb::handle entry : function.attr("__nb_signature__")) {
    const std::string text = nb::str(entry[0]).c_str();
    const std::size_t arrow = text.rfind(") -> ");
    if (arrow == std::string::npos) continue;
    for (std::size_t at = text.find(type_path, arrow); at != std::string::npos;
         at = text.find(type_path, at + 1)) {
      const std::size_t end = at + type_path.size();
      if (end == text.size() || !(std::isalnum(static_cast<unsigned char>(text[end])) ||
                                  text[end] == '_')) {
        return true;
      }
    }
  }
  return false;
}

// A class with no public constructor gets one that says where its objects come from.
void refuse_construction(nb::handle cls, const std::string& class_name,
                         const std::vector<BoundFunction>& functions,
                         const nb::object& error_type) {
  const std::string type_path =
      std::string(nb::str(cls.attr("__module__")).c_str()) + "." + class_name;
  std::string producers;
  for (const BoundFunction& f : functions) {
    if (f.qualified != class_name && returns(f.function, type_path)) {
      producers += (producers.empty() ? "" : ", ") + f.qualified;
    }
  }
  const std::string message =
      class_name + " objects cannot be constructed directly; they come from the engine" +
      (producers.empty() ? std::string(".") : ": " + producers + ".");
  auto refuse = [error_type, message](nb::handle, nb::args, SecondPass, nb::kwargs) {
    raise_type_error(error_type, message);
  };
  nb::cpp_function_def(std::move(refuse), nb::scope(cls), nb::name("__init__"), nb::is_method(),
                       nb::arg("args"), nb::arg("_second_pass") = nb::int_(0),
                       nb::arg("kwargs"));
}

}  // namespace

void reject_mismatched_arguments(nb::module_& m) {
  const nb::object error_type = nb::module_::import_("fheprune.errors").attr("InputTypeError");
  const nb::object builtins = nb::module_::import_("builtins");
  const std::string module_name = nb::str(m.attr("__name__")).c_str();

  // Collect everything first: adding overloads replaces entries of the namespaces walked.
  std::vector<BoundFunction> functions;
  std::vector<std::pair<nb::handle, std::string>> classes;
  std::vector<std::tuple<nb::handle, std::string, std::string, nb::object>> settable;
  for (auto [key, value] : as_dict(m.attr("__dict__"))) {
    const std::string name = nb::str(key).c_str();
    if (name.rfind("__", 0) == 0) continue;
    if (is_nanobind_function(value, "nb_func")) {
      functions.push_back({m, name, name, false, nb::borrow(value)});
      continue;
    }
    const bool own_class = nb::type_check(value) &&
                           std::string(nb::str(value.attr("__module__")).c_str()) == module_name;
    if (!own_class || nb::str(value.attr("__name__")).c_str() != name) continue;  // aliases
    classes.emplace_back(value, name);
    for (auto [member_key, member] : as_dict(value.attr("__dict__"))) {
      const std::string member_name = nb::str(member_key).c_str();
      // Operators (and other protocol methods) must keep returning NotImplemented.
      const bool dunder = member_name.size() > 4 && member_name.rfind("__", 0) == 0;
      if (dunder && member_name != "__init__") continue;
      const std::string qualified = name + (member_name == "__init__" ? "" : "." + member_name);
      if (is_nanobind_function(member, "nb_method")) {
        functions.push_back({value, member_name, qualified, true, nb::borrow(member)});
      } else if (is_nanobind_function(member, "nb_func")) {
        functions.push_back({value, member_name, qualified, false, nb::borrow(member)});
      } else if (nb::isinstance(member, builtins.attr("property")) &&
                 !member.attr("fset").is_none()) {
        settable.emplace_back(value, member_name, qualified, nb::borrow(member));
      }
    }
  }

  for (const auto& [cls, name] : classes) {
    if (!is_nanobind_function(nb::getattr(cls, "__init__"), "nb_method")) {
      refuse_construction(cls, name, functions, error_type);
    }
  }
  for (const BoundFunction& f : functions) {
    add_catch_all(f.scope, f.name, f.qualified, f.is_method, error_type);
  }
  for (const auto& [cls, name, qualified, property] : settable) {
    nb::setattr(cls, name.c_str(), checked_property(property, qualified, error_type));
  }
}

// Bindings of the runtime: programs, the engine executor and the slot simulator, the cost model.
// Arrays in and out are numpy float64; runs release the GIL.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <array>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "bytes.hpp"
#include "fheprune/ckks/ckks.hpp"
#include "fheprune/runtime/cost.hpp"
#include "fheprune/runtime/executor.hpp"
#include "fheprune/runtime/program.hpp"
#include "fheprune/runtime/server.hpp"
#include "fheprune/runtime/signing.hpp"

namespace nb = nanobind;
using namespace nb::literals;
namespace ck = fheprune::ckks;
namespace rt = fheprune::runtime;

namespace {

using Matrix = nb::ndarray<nb::numpy, const double, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Vector = nb::ndarray<nb::numpy, const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutMatrix = nb::ndarray<nb::numpy, double, nb::ndim<2>>;
using release_gil = nb::call_guard<nb::gil_scoped_release>;

OutMatrix to_matrix(std::vector<double>&& v, std::size_t rows, std::size_t cols) {
  auto* heap = new std::vector<double>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<double>*>(p); });
  return OutMatrix(heap->data(), {rows, cols}, owner);
}

OutMatrix rows_to_matrix(const std::vector<std::vector<double>>& rows, std::size_t cols) {
  std::vector<double> flat;
  flat.reserve(rows.size() * cols);
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return to_matrix(std::move(flat), rows.size(), cols);
}

std::vector<std::vector<double>> matrix_rows(const Matrix& m) {
  std::vector<std::vector<double>> rows(m.shape(0));
  for (std::size_t i = 0; i < m.shape(0); ++i) {
    rows[i].assign(m.data() + i * m.shape(1), m.data() + (i + 1) * m.shape(1));
  }
  return rows;
}

nb::dict ops_dict(const rt::OpCounts& o) {
  nb::dict d;
  d["mul_plain"] = o.mul_plain;
  d["add"] = o.add;
  d["add_plain"] = o.add_plain;
  d["rotate"] = o.rotate;
  d["rescale"] = o.rescale;
  d["multiply"] = o.multiply;
  d["relinearize"] = o.relinearize;
  d["constant"] = o.constant;
  d["refresh"] = o.refresh;
  return d;
}

nb::dict stats_dict(const rt::RunStats& s) {
  nb::list layers;
  for (const auto& l : s.layers) {
    nb::dict d;
    d["name"] = l.name;
    d["ops"] = ops_dict(l.ops);
    d["seconds"] = l.seconds;
    layers.append(d);
  }
  nb::dict out;
  out["layers"] = layers;
  out["ops"] = ops_dict(s.total());
  out["peak_ciphertexts"] = s.peak_ciphertexts;
  out["peak_ciphertext_bytes"] = s.peak_ciphertext_bytes;
  out["encoded"] = s.encoded;
  out["encode_seconds"] = s.encode_seconds;
  return out;
}

// Shared ownership of an object Python owns: the pointer holds a reference to the Python
// object, so the object lives as long as any C++ holder (a Server's keys) does.
template <class T>
std::shared_ptr<const T> shared_from_python(const T& value, nb::handle owner) {
  nb::object ref = nb::borrow(owner);
  return std::shared_ptr<const T>(&value, [ref = std::move(ref)](const T*) mutable {
    nb::gil_scoped_acquire gil;
    ref.reset();
  });
}

struct SimRun {
  rt::Program program;
  rt::SlotBackend backend;
  rt::Executor<rt::SlotBackend> exec;
  SimRun(rt::Program p, ck::ContextPtr ctx, std::vector<long> keys, rt::Encoding e,
         const std::optional<rt::RefreshModel>& refresh)
      : program(std::move(p)),
        backend(with_refresh(rt::SlotBackend(std::move(ctx), std::move(keys)), refresh)),
        exec(program, backend, e) {}
  static rt::SlotBackend with_refresh(rt::SlotBackend b, const std::optional<rt::RefreshModel>& m) {
    if (m) b.set_refresh(*m);
    return b;
  }
};

rt::Encoding encoding(bool on_demand) {
  return on_demand ? rt::Encoding::kOnDemand : rt::Encoding::kAtSetup;
}

std::string layout_name(rt::Layout l) {
  switch (l) {
    case rt::Layout::kTile: return "tile";
    case rt::Layout::kDiagonal: return "diagonal";
    case rt::Layout::kMap: return "map";
  }
  return "unknown";
}

using Index32 = nb::ndarray<nb::numpy, const std::uint32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Index64 = nb::ndarray<nb::numpy, const std::uint64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// A map layer's bias [out_ciphertexts, period] as (values, period); None or empty: no bias.
std::pair<std::span<const double>, std::size_t> map_bias(const std::string& name,
                                                         std::size_t out_ciphertexts,
                                                         const std::optional<Matrix>& bias) {
  if (!bias || bias->shape(0) * bias->shape(1) == 0) return {{}, 0};
  if (bias->shape(0) != out_ciphertexts) {
    throw rt::CompileError("layer '" + name + "': bias has " + std::to_string(bias->shape(0)) +
                           " rows, expected one per output ciphertext (" +
                           std::to_string(out_ciphertexts) + ")");
  }
  return {{bias->data(), bias->shape(0) * bias->shape(1)}, bias->shape(1)};
}

std::span<const std::size_t> as_sizes(const Index64& a) {
  static_assert(sizeof(std::size_t) == sizeof(std::uint64_t));
  return {reinterpret_cast<const std::size_t*>(a.data()), a.shape(0)};
}

// The facts about its program that a Server or ProgramHost tells Python. What it holds stays
// inside it: never a reference to the program, the keys or the context a run is using.
template <class Holder>
void bind_program_facts(nb::class_<Holder>& cls) {
  cls.def_prop_ro("parameters", [](const Holder& h) { return h.program().parameters(); })
      .def_prop_ro("input_ciphertexts",
                   [](const Holder& h) { return h.program().input_ciphertexts(); })
      .def_prop_ro("output_ciphertexts",
                   [](const Holder& h) { return h.program().output_ciphertexts(); })
      .def_prop_ro("threads", [](const Holder& h) { return h.context()->threads(); })
      .def_prop_ro("program_fingerprint",
                   [](const Holder& h) {
                     const auto fp = h.program_fingerprint();
                     return to_bytes(fp);
                   },
                   "BLAKE2b-256 of the program file.")
      .def_prop_ro("plaintext_bytes", &Holder::plaintext_bytes)
      .def_prop_ro("plaintext_count", &Holder::plaintext_count);
}

}  // namespace

void bind_runtime(nb::module_& m) {
  nb::exception<rt::CompileError>(m, "CompileError", m.attr("FheError").ptr());

  nb::class_<rt::Program>(m, "Program",
                          "A compiled network: only its non-zero units, in a tile or diagonal "
                          "layout (see fheprune/runtime/program.hpp).")
      .def_static(
          "tile",
          [](const ck::Parameters& p, std::size_t outer, std::size_t inner, std::size_t batch,
             std::size_t in_features) {
            return rt::Program::tile(p, {outer, inner, batch}, in_features);
          },
          "parameters"_a, "t_outer"_a, "t_inner"_a, "t_batch"_a, "in_features"_a)
      .def_static("diagonal", &rt::Program::diagonal, "parameters"_a, "in_features"_a)
      .def_static("map", &rt::Program::map, "parameters"_a, "input_ciphertexts"_a,
                  "A map-layout program (single sample, several ciphertexts).")
      .def(
          "add_map_linear",
          [](rt::Program& p, const std::string& name, std::size_t out_ciphertexts,
             const Index32& out, const Index32& in, const Index64& shift, const Matrix& values,
             std::optional<Matrix> bias, std::optional<Index64> baby) {
            const auto [b, bias_period] = map_bias(name, out_ciphertexts, bias);
            if (values.shape(0) != out.shape(0)) {
              throw rt::CompileError("layer '" + name + "': values has " +
                                     std::to_string(values.shape(0)) + " rows for " +
                                     std::to_string(out.shape(0)) + " terms");
            }
            p.add_map_linear(name, out_ciphertexts, {out.data(), out.shape(0)},
                             {in.data(), in.shape(0)}, as_sizes(shift),
                             {values.data(), values.shape(0) * values.shape(1)}, values.shape(1),
                             b, bias_period,
                             baby ? as_sizes(*baby) : std::span<const std::size_t>{});
          },
          "name"_a, "out_ciphertexts"_a, "out_ct"_a, "in_ct"_a, "shift"_a, "values"_a,
          "bias"_a = nb::none(), "baby"_a = nb::none(),
          "Terms: values[t] (one period, repeated over the slots) times input in_ct[t] rotated "
          "by shift[t], summed into output out_ct[t]; bias [out_ciphertexts, period] or None; "
          "baby: the compiler's baby step per term (a split hint) or None.")
      .def(
          "add_map_linear_sparse",
          [](rt::Program& p, const std::string& name, std::size_t out_ciphertexts,
             const Index32& out, const Index32& in, const Index64& shift, const Index64& offsets,
             const Index32& at, const Vector& values, std::size_t period,
             std::optional<Matrix> bias, std::optional<Index64> baby) {
            const auto [b, bias_period] = map_bias(name, out_ciphertexts, bias);
            p.add_map_linear_sparse(
                name, out_ciphertexts, {out.data(), out.shape(0)}, {in.data(), in.shape(0)},
                as_sizes(shift), {offsets.data(), offsets.shape(0)}, {at.data(), at.shape(0)},
                {values.data(), values.shape(0)}, period, b, bias_period,
                baby ? as_sizes(*baby) : std::span<const std::size_t>{});
          },
          "name"_a, "out_ciphertexts"_a, "out_ct"_a, "in_ct"_a, "shift"_a, "offsets"_a, "at"_a,
          "values"_a, "period"_a, "bias"_a = nb::none(), "baby"_a = nb::none(),
          "add_map_linear with sparse values: term t's non-zero values are "
          "values[offsets[t]:offsets[t + 1]], at slots at[...] of its period.")
      .def("add_rotate_sum", &rt::Program::add_rotate_sum, "name"_a, "windows"_a, "fold"_a = 1,
           "Average pooling: add the input ciphertexts in `fold` equal groups (output o sums "
           "inputs o + m * n/fold), then per ciphertext the sum over windows "
           "[(count, stride), ...] by rotate-and-add.")
      .def(
          "set_outputs",
          [](rt::Program& p, const Index32& ct, const Index64& slot) {
            p.set_outputs({ct.data(), ct.shape(0)}, as_sizes(slot));
          },
          "ct"_a, "slot"_a, "Output feature f is slot slot[f] of output ciphertext ct[f].")
      .def(
          "map_layers",
          [](const rt::Program& p) {
            nb::list out;
            for (const auto& layer : p.layers()) {
              const auto* m = std::get_if<rt::MapLinear>(&layer);
              if (!m) continue;
              nb::dict d;
              d["name"] = m->name;
              d["terms"] = m->terms.size();
              d["n1"] = m->n1;
              d["giant_is_residue"] = m->giant_is_residue;
              d["hinted"] = m->hinted;
              nb::list terms;
              for (const auto& t : m->terms) {
                terms.append(nb::make_tuple(t.out, t.in, t.shift, t.baby, t.giant));
              }
              d["split"] = terms;
              out.append(d);
            }
            return out;
          },
          "Per map layer: its terms (out, in, shift, baby, giant) and the chosen split.")
      .def(
          "add_linear",
          [](rt::Program& p, const std::string& name, const Matrix& w, std::optional<Vector> b) {
            std::span<const double> bias;
            if (b) bias = {b->data(), b->shape(0)};
            p.add_linear(name, w.shape(0), w.shape(1), {w.data(), w.shape(0) * w.shape(1)}, bias);
          },
          "name"_a, "weight"_a, "bias"_a = nb::none())
      .def("add_square", &rt::Program::add_square, "name"_a)
      .def("place_refreshes", &rt::Program::place_refreshes, "config"_a,
           "Places the fewest bootstrapping refreshes so the program runs to its end on its "
           "parameters (which must bootstrap with `config`); returns how many.", release_gil())
      .def_prop_ro("refreshes", &rt::Program::refreshes)
      .def_prop_ro("refresh_config", &rt::Program::refresh_config,
                   "The refreshes' bootstrapping configuration (None without refreshes); its "
                   "slots are the sparse period a diagonal program refreshes.")
      .def_prop_ro("input_level", &rt::Program::input_level,
                   "The level inputs are encrypted at (below the refresh primes when the program "
                   "refreshes).")
      .def_prop_ro("depth", &rt::Program::depth, "Levels the layers consume in all.")
      .def_prop_ro("needs_conjugation", &rt::Program::needs_conjugation)
      .def("level_schedule",
           [](const rt::Program& p, std::optional<std::size_t> input_level) {
             return p.level_schedule(input_level.value_or(p.input_level()));
           },
           "input_level"_a = nb::none(),
           "The level of each layer's inputs, then of the outputs.")
      .def_prop_ro("layout", [](const rt::Program& p) { return layout_name(p.layout()); })
      .def_prop_ro("parameters", &rt::Program::parameters)
      .def_prop_ro("slots", &rt::Program::slots)
      .def_prop_ro("tile_shape",
                   [](const rt::Program& p) {
                     const auto& s = p.tile_shape();
                     return std::make_tuple(s.outer, s.inner, s.batch);
                   })
      .def_prop_ro("in_features", &rt::Program::in_features)
      .def_prop_ro("out_features", &rt::Program::out_features)
      .def_prop_ro("samples_per_group", &rt::Program::samples_per_group)
      .def_prop_ro("input_ciphertexts", &rt::Program::input_ciphertexts)
      .def_prop_ro("output_ciphertexts", &rt::Program::output_ciphertexts)
      .def_prop_ro("levels", &rt::Program::levels)
      .def("rotation_steps", &rt::Program::rotation_steps)
      .def(
          "pack_inputs",
          [](const rt::Program& p, const Matrix& x) {
            if (x.shape(1) != p.in_features()) {
              throw rt::CompileError("inputs have " + std::to_string(x.shape(1)) +
                                     " features, the program takes " +
                                     std::to_string(p.in_features()));
            }
            auto rows = p.pack_inputs({x.data(), x.shape(0) * x.shape(1)}, x.shape(0));
            return rows_to_matrix(rows, p.slots());
          },
          "samples"_a, "Samples [count, in_features] -> slot vectors [ciphertexts, slots].")
      .def(
          "unpack_outputs",
          [](const rt::Program& p, const Matrix& slots, std::size_t count) {
            auto y = p.unpack_outputs(matrix_rows(slots), count);
            return to_matrix(std::move(y), count, p.out_features());
          },
          "slots"_a, "count"_a)
      .def("save", [](const rt::Program& p) { return to_bytes(p.save()); })
      .def_prop_ro("fingerprint",
                   [](const rt::Program& p) {
                     const auto fp = rt::program_fingerprint(p.save());
                     return to_bytes(fp);
                   },
                   "BLAKE2b-256 of the program file (what a Server reports).")
      .def_static("load", [](const nb::bytes& b) { return rt::Program::load(as_span(b)); })
      .def(
          "input_range",
          [](const rt::Program& p, double margin_bits) {
            const rt::InputRange r =
                rt::input_range(p, p.input_level(), margin_bits);
            nb::dict d;
            d["max_input"] = r.max_input;
            d["limiting_layer"] = r.limiting_layer;
            return d;
          },
          "margin_bits"_a = 1.0,
          "The largest input magnitude the program holds at its parameters (inputs beyond it "
          "wrap around a modulus and decrypt to garbage) and the layer that limits it.")
      .def(
          "cost",
          [](const rt::Program& p, std::optional<std::size_t> input_level) {
            const std::size_t level = input_level.value_or(p.input_level());
            nb::list out;
            for (const auto& c : rt::estimate_cost(p, level)) {
              nb::dict d;
              d["name"] = c.name;
              d["kind"] = c.kind;
              d["level"] = c.level;
              d["rebuild"] = c.rebuild;
              d["ops"] = ops_dict(c.ops);
              nb::dict by_level;
              for (const auto& [op, levels] : c.ops_by_level) {
                nb::dict per;
                for (const auto& [lv, count] : levels) per[nb::cast(lv)] = count;
                by_level[op.c_str()] = per;
              }
              d["ops_by_level"] = by_level;
              d["units"] = c.units;
              d["total_units"] = c.total_units;
              d["rotation_lower_bound"] = c.rotation_lower_bound;
              d["mul_plain_lower_bound"] = c.mul_plain_lower_bound;
              d["plaintexts"] = c.plaintexts;
              d["plaintext_bytes"] = c.plaintext_bytes;
              out.append(d);
            }
            return out;
          },
          "input_level"_a = nb::none(),
          "Per layer and per group of samples: the operations the executor will perform, the "
          "lower bounds, and the plaintexts it stores. 'ops_by_level' gives the same operations "
          "as {op: {level: count}}, by the level of the ciphertext each acts on, with hoisted "
          "rotations ('rotate_hoisted') and the additions inside fused sums of products "
          "('add_fused') apart from 'rotate' and 'add' (which 'ops' counts them with).");

  m.def(
      "tile_layer_plan",
      [](std::size_t t_outer, std::size_t t_inner, std::size_t index) {
        const rt::TileLayerPlan plan = rt::tile_layer_plan({t_outer, t_inner, 1}, index);
        nb::dict d;
        d["sum"] = plan.sum == rt::SumDim::kOuter ? "outer" : "inner";
        d["rebuild_input"] = plan.rebuild_input;
        d["tile_rows"] = plan.tile_rows;
        d["tile_cols"] = plan.tile_cols;
        d["levels"] = plan.levels();
        return d;
      },
      "t_outer"_a, "t_inner"_a, "index"_a,
      "How the tile layout runs linear layer `index` of a chain on a [t_outer, t_inner, *] "
      "ciphertext tile: the summed dimension, whether it rebuilds its input, its weight tile "
      "(tile_rows outputs x tile_cols inputs) and its levels. The rule Program.tile applies.");
  m.def(
      "window_sum_steps",
      [](const std::vector<std::pair<std::size_t, std::size_t>>& windows) {
        rt::RotateSum r;
        r.windows = windows;
        return rt::window_sum_steps(r);
      },
      "windows"_a,
      "The rotation steps of a window sum over (count, stride) windows, in the order the "
      "executor runs them: one rotation per entry (the rule Program.rotate_sum applies).");
  m.def(
      "layer_levels",
      [](const std::string& layout, const std::vector<std::string>& kinds) {
        rt::Layout l;
        if (layout == "tile") {
          l = rt::Layout::kTile;
        } else if (layout == "diagonal") {
          l = rt::Layout::kDiagonal;
        } else if (layout == "map") {
          l = rt::Layout::kMap;
        } else {
          throw rt::CompileError("layer_levels: layout must be 'tile', 'diagonal' or 'map', got '" +
                                 layout + "'");
        }
        std::vector<rt::LayerKind> parsed;
        parsed.reserve(kinds.size());
        for (const std::string& k : kinds) {
          if (k == "linear") {
            parsed.push_back(rt::LayerKind::kLinear);
          } else if (k == "square") {
            parsed.push_back(rt::LayerKind::kSquare);
          } else if (k == "rotate_sum") {
            parsed.push_back(rt::LayerKind::kRotateSum);
          } else {
            throw rt::CompileError(
                "layer_levels: a layer kind is 'linear', 'square' or 'rotate_sum', got '" + k + "'");
          }
        }
        return rt::layer_levels(l, parsed);
      },
      "layout"_a, "kinds"_a,
      "The levels each layer of a chain of 'linear' / 'square' / 'rotate_sum' layers consumes "
      "in `layout`, before any parameters exist (their sum is Program.levels once built).");

  m.def("plan_refreshes", &rt::plan_refreshes, "levels"_a, "live"_a, "top"_a, "to_level"_a,
        "Where refreshes go in a chain of layers consuming `levels` with `live` live "
        "ciphertexts each, inputs at level `top`, a refresh leaving `to_level`: the layer "
        "indices a refresh goes in front of, fewest refreshed ciphertexts first (LevelError when "
        "a layer needs more than a refresh leaves).");

  auto server = nb::class_<rt::Server>(
      m, "Server",
      "The server role (fheprune/runtime/server.hpp): a program and one client's evaluation keys, "
      "checked to belong together (parameters, key ids, every rotation key) before any work, "
      "and every input checked before a run. Encodes every plaintext once, here; with "
      "encode_on_demand=True, map layers encode each plaintext in every run instead (programs "
      "whose plaintexts would not fit in memory).")
      .def(
          "__init__",
          [](rt::Server* s, const nb::bytes& program, const nb::bytes& evaluation_keys,
             std::size_t threads, bool encode_on_demand) {
            // The bytes objects stay referenced by the caller's frame; set-up (context,
            // plaintext encoding) can take seconds, so other Python threads run meanwhile.
            nb::gil_scoped_release release;
            new (s) rt::Server(rt::Server::from_bytes(
                as_span(program), as_span(evaluation_keys),
                {.threads = threads, .encoding = encoding(encode_on_demand)}));
          },
          "program"_a, "evaluation_keys"_a, "threads"_a = 1, "encode_on_demand"_a = false,
          "From a program file and an evaluation-key bundle (bytes); refuses any other object.")
      .def(
          "__init__",
          [](rt::Server* s, const rt::Program& p, std::shared_ptr<ck::Context> ctx,
             const ck::EvaluationKeys& keys, bool encode_on_demand) {
            // Shared with the Python object that owns them; a bundle no Python object owns (a
            // temporary) is copied, so the server never refers to memory it does not keep alive.
            const nb::handle owner = nb::find(&keys);
            auto shared_keys = owner ? shared_from_python(keys, owner)
                                     : std::make_shared<const ck::EvaluationKeys>(keys);
            nb::gil_scoped_release release;
            new (s) rt::Server(std::make_shared<const rt::Program>(p), std::move(ctx),
                               std::move(shared_keys), encoding(encode_on_demand));
          },
          "program"_a, "context"_a, "evaluation_keys"_a, "encode_on_demand"_a = false,
          "From loaded objects: the context must have the program's parameters; the keys are "
          "shared, not copied.");
  bind_program_facts(server);
  server.def_prop_ro("key_id", [](const rt::Server& s) { return to_bytes(s.key_id()); })
      .def(
          "set_threads",
          [](rt::Server& s, std::size_t threads) {
            nb::gil_scoped_release release;  // waits for a run in flight
            s.set_threads(threads);
          },
          "threads"_a,
          "Engine threads for the following runs; only for a server that made its own context.")
      .def(
          "run",
          [](const rt::Server& s, const std::vector<const ck::Ciphertext*>& inputs) {
            rt::RunStats stats;
            std::vector<std::optional<ck::Ciphertext>> out;
            {
              nb::gil_scoped_release release;
              out = s.run(std::span<const ck::Ciphertext* const>(inputs), &stats);
            }
            return std::make_tuple(std::move(out), stats_dict(stats));
          },
          "inputs"_a,
          "Returns (outputs, stats): output ciphertexts (None = known zero) and the counts, "
          "per-layer times and peak ciphertexts of this run.")
      .def(
          "load_ciphertext",
          [](const rt::Server& s, const nb::bytes& b) {
            nb::gil_scoped_release release;  // `b` stays referenced by the caller
            return s.load_ciphertext(as_span(b));
          },
          "data"_a, "A serialized input ciphertext, checked like a run input.")
      .def(
          "save_ciphertext",
          [](const rt::Server& s, const ck::Ciphertext& c) {
            ck::Bytes out;
            {
              nb::gil_scoped_release release;
              out = s.save_ciphertext(c);
            }
            return to_bytes(out);
          },
          "ciphertext"_a);
  auto host = nb::class_<rt::ProgramHost>(
      m, "ProgramHost",
      "One program for many clients (fheprune/runtime/server.hpp): the program, its context and "
      "its plaintexts are built once; serve() gives each client's evaluation keys a Server "
      "sharing them. Servers from one host run concurrently on Python threads.")
      .def(
          "__init__",
          [](rt::ProgramHost* h, const nb::bytes& program, std::size_t threads,
             bool encode_on_demand) {
            nb::gil_scoped_release release;  // `program` stays referenced by the caller
            new (h) rt::ProgramHost(rt::ProgramHost::from_bytes(
                as_span(program), {.threads = threads, .encoding = encoding(encode_on_demand)}));
          },
          "program"_a, "threads"_a = 1, "encode_on_demand"_a = false,
          "From a program file (bytes); threads: engine threads per run.")
      .def(
          "serve",
          [](const rt::ProgramHost& h, const nb::bytes& evaluation_keys) {
            nb::gil_scoped_release release;
            return h.serve(as_span(evaluation_keys));
          },
          "evaluation_keys"_a,
          "A Server for one client's evaluation-key bundle (bytes), checked like Server's.");
  bind_program_facts(host);
  nb::class_<rt::SigningKey>(
      m, "SigningKey",
      "A model owner's Ed25519 signing key: signs program files and client specs so that the "
      "server and the client can check where they come from (fheprune/runtime/signing.hpp).")
      .def_static("generate", &rt::SigningKey::generate)
      .def_static("from_seed",
                  [](const nb::bytes& b) {
                    if (b.size() != 32) {
                      throw ck::ParameterError("a signing key seed is 32 bytes, got " +
                                              std::to_string(b.size()));
                    }
                    std::array<std::uint8_t, 32> seed{};
                    std::memcpy(seed.data(), b.c_str(), seed.size());
                    return rt::SigningKey::from_seed(seed);
                  })
      .def_prop_ro("seed",
                   [](const rt::SigningKey& k) {
                     const auto seed = k.seed();
                     return to_bytes(seed);
                   },
                   "The 32 secret bytes the key is rebuilt from; keep them private.")
      .def_prop_ro("verify_key", [](const rt::SigningKey& k) { return k.verify_key().hex(); },
                   "The public verification key (64 hex digits) to give the other parties.")
      .def("sign", [](const rt::SigningKey& k, const nb::bytes& data) {
        const auto sig = k.sign(as_span(data));
        return to_bytes(sig);
      }, "data"_a)
      .def("__repr__", [](const rt::SigningKey& k) {
        return "<SigningKey " + k.verify_key().hex().substr(0, 16) + "... (owner only)>";
      });
  m.def(
      "verify_signature",
      [](const nb::bytes& data, const nb::bytes& signature, const std::string& owner,
         const std::string& what) {
        rt::verify_signature(as_span(data), as_span(signature), rt::VerifyKey::from_hex(owner),
                             what);
      },
      "data"_a, "signature"_a, "verify_key"_a, "what"_a = "file",
      "MismatchError unless `signature` is the owner's signature of exactly `data`.");

  // The name earlier releases used for the same object.
  m.attr("EngineExecutor") = m.attr("Server");

  nb::class_<SimRun>(m, "SimulatedExecutor",
                     "Runs the very same program on plain slot vectors (same units, rotations, "
                     "levels and scales as the engine).")
      .def(
          "__init__",
          [](SimRun* r, const rt::Program& p, std::shared_ptr<ck::Context> ctx,
             std::optional<std::vector<long>> rotation_keys, bool encode_on_demand,
             double refresh_error, double refresh_bound, std::uint64_t refresh_seed) {
            rt::check_context(p, *ctx);
            std::optional<rt::RefreshModel> model;
            for (const rt::Layer& l : p.layers()) {
              if (const auto* rf = std::get_if<rt::Refresh>(&l)) {
                model = rt::RefreshModel{rf->to_level, refresh_error, refresh_bound, refresh_seed,
                                         rf->config.slots};
                break;
              }
            }
            new (r) SimRun(p, std::move(ctx), rotation_keys.value_or(p.rotation_steps()),
                           encoding(encode_on_demand), model);
          },
          "program"_a, "context"_a, "rotation_keys"_a = nb::none(),
          "encode_on_demand"_a = false, "refresh_error"_a = 0.0, "refresh_bound"_a = 1.0,
          "refresh_seed"_a = 0,
          "refresh_*: how a program's refreshes are modelled: Gaussian error of this standard "
          "deviation per slot (the engine's measured refresh error; 0: exact), values beyond "
          "the bound refused (EncodingError), the error's seed.")
      .def_prop_ro("plaintext_bytes", [](const SimRun& r) { return r.exec.plaintext_bytes(); })
      .def(
          "run",
          [](SimRun& r, const Matrix& inputs) {
            std::vector<rt::SlotBackend::Ct> in;
            for (auto& row : matrix_rows(inputs)) {
              in.push_back(r.backend.encode(row, r.program.input_level(), r.backend.default_scale()));
            }
            rt::RunStats stats;
            std::vector<std::vector<double>> rows;
            {
              nb::gil_scoped_release release;
              for (auto& c : r.exec.run(in, &stats)) {
                rows.push_back(c ? c->slots : std::vector<double>(r.program.slots(), 0.0));
              }
            }
            return std::make_tuple(rows_to_matrix(rows, r.program.slots()), stats_dict(stats));
          },
          "inputs"_a, "Slot vectors [ciphertexts, slots] -> (slot vectors, stats).");
}

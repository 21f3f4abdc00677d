// Runs a Program on a backend (EngineBackend: ciphertexts; SlotBackend: the cleartext slot
// simulator). The kernels below are the only place the layouts turn into operations, and they
// skip every unit the program does not hold: a zero weight tile costs nothing, an output tile
// with no live unit costs no rotation, a diagonal outside the set costs nothing.
//
// Level schedule (Program::level_schedule): inputs arrive at Program::input_level() (the top
// level, or below a bootstrappable chain's refresh primes) with the default scale Delta.
// Weight plaintexts at level l are encoded at scale q_l, so product + rescale keeps the scale;
// every plaintext is encoded once, when the executor is built (the server's set-up), at the
// exact level and scale it will meet. Programs whose plaintexts would not fit in memory (a dense
// VGG-5 map program encodes to about 29 GB) can instead encode each map term's plaintext right
// before its product and drop it after (Encoding::kOnDemand): the same operations on the
// ciphertexts, plus the encoding time in every run.
#pragma once

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fheprune/runtime/backends.hpp"
#include "fheprune/runtime/program.hpp"

namespace fheprune::runtime {

struct OpCounts {
  std::uint64_t mul_plain = 0;
  std::uint64_t add = 0;        // ciphertext + ciphertext
  std::uint64_t add_plain = 0;
  std::uint64_t rotate = 0;     // every rotated ciphertext (hoisted ones included)
  std::uint64_t rescale = 0;
  std::uint64_t multiply = 0;   // ciphertext x ciphertext
  std::uint64_t relinearize = 0;
  std::uint64_t constant = 0;   // outputs of pruned-away units: a copy of a constant ciphertext
                                // the executor encrypted once, on first use
  std::uint64_t refresh = 0;    // bootstrapping refreshes (one per live ciphertext)

  OpCounts& operator+=(const OpCounts& o) {
    mul_plain += o.mul_plain;
    add += o.add;
    add_plain += o.add_plain;
    rotate += o.rotate;
    rescale += o.rescale;
    multiply += o.multiply;
    relinearize += o.relinearize;
    constant += o.constant;
    refresh += o.refresh;
    return *this;
  }
  OpCounts scaled(std::uint64_t k) const {
    OpCounts o = *this;
    o.mul_plain *= k, o.add *= k, o.add_plain *= k, o.rotate *= k, o.rescale *= k;
    o.multiply *= k, o.relinearize *= k, o.constant *= k, o.refresh *= k;
    return o;
  }
  bool operator==(const OpCounts&) const = default;
};

struct LayerStats {
  std::string name;
  OpCounts ops;
  double seconds = 0.0;
};

struct RunStats {
  std::vector<LayerStats> layers;
  std::size_t encoded = 0;       // plaintexts encoded during the run (Encoding::kOnDemand)
  double encode_seconds = 0.0;   // the time that took (included in the layers' seconds)
  // Ciphertexts held at once in the serial order (one accumulator at a time): the same for
  // every thread count; with T threads up to T - 1 more accumulators (or shares) are alive.
  std::size_t peak_ciphertexts = 0;
  // The most bytes of ciphertexts held at once, at the levels they were held (an
  // unrelinearized product counts three polynomials); not always where the count peaks.
  std::size_t peak_ciphertext_bytes = 0;
  OpCounts total() const {
    OpCounts t;
    for (const auto& l : layers) t += l.ops;
    return t;
  }
};

std::string layer_name(const Layer& layer);

// When the executor encodes the weight plaintexts of map layers.
enum class Encoding : std::uint8_t {
  kAtSetup,   // once, when the executor is built: runs only multiply (the default)
  kOnDemand,  // in every run, one giant-step block at a time: memory for one block per thread
};

template <class Backend>
class Executor {
 public:
  using Ct = typename Backend::Ct;
  using Pt = typename Backend::Pt;

  Executor(const Program& program, Backend& backend, Encoding encoding = Encoding::kAtSetup)
      : program_(program), backend_(backend), encoding_(encoding) {
    auto prepared = std::make_shared<std::vector<Prepared>>();
    prepare(*prepared);
    prepared_ = std::move(prepared);
    constants_.resize(prepared_->size());
  }

  // An executor of the same program on another backend (another client's keys) that shares
  // `other`'s plaintexts: they depend on the program and the parameters only, so a server
  // encodes them once for all its clients. `backend` must have `other`'s context.
  Executor(const Executor& other, Backend& backend)
      : program_(other.program_),
        backend_(backend),
        encoding_(other.encoding_),
        prepared_(other.prepared_),
        plaintext_bytes_(other.plaintext_bytes_),
        plaintext_count_(other.plaintext_count_),
        input_level_(other.input_level_) {
    if (&backend.context() != &other.backend_.context()) {
      throw ckks::MismatchError("an executor sharing plaintexts must run on the same context");
    }
    constants_.resize(prepared_->size());
  }

  Encoding encoding() const { return encoding_; }
  // Plaintexts encoded at set-up (with Encoding::kOnDemand: only the biases and masks).
  std::size_t plaintext_bytes() const { return plaintext_bytes_; }
  std::size_t plaintext_count() const { return plaintext_count_; }
  std::size_t input_level() const { return input_level_; }

  // `inputs`: input_ciphertexts() per group of samples, group after group, all at
  // input_level() with the default scale. Returns output_ciphertexts() per group; nullopt = known zero.
  std::vector<std::optional<Ct>> run(const std::vector<Ct>& inputs, RunStats* stats = nullptr) {
    std::vector<const Ct*> view;
    view.reserve(inputs.size());
    for (const Ct& c : inputs) view.push_back(&c);
    return run(view, stats);
  }

  // The same on borrowed inputs (no copy of the input ciphertexts).
  std::vector<std::optional<Ct>> run(const std::vector<const Ct*>& inputs,
                                     RunStats* stats = nullptr) {
    const std::size_t per_group = program_.input_ciphertexts();
    if (inputs.empty() || inputs.size() % per_group != 0) {
      throw CompileError("the program takes " + std::to_string(per_group) +
                         " input ciphertexts per group of samples, got " +
                         std::to_string(inputs.size()));
    }
    for (const Ct* c : inputs) {
      if (backend_.level(*c) != input_level_) {
        throw ckks::LevelError("input ciphertext at level " + std::to_string(backend_.level(*c)) +
                               ", the program expects inputs at level " +
                               std::to_string(input_level_) + " (Program::input_level())");
      }
    }
    RunStats local;
    RunStats& st = stats ? *stats : local;
    st = RunStats{};
    for (const Layer& l : program_.layers()) st.layers.push_back({layer_name(l), {}, 0.0});
    std::vector<std::optional<Ct>> outputs;
    for (std::size_t g = 0; g < inputs.size() / per_group; ++g) {
      // Layer inputs are borrowed pointers (nullptr = known zero); each layer's outputs are
      // owned by `owned` until the next layer has consumed them.
      std::vector<const Ct*> x(inputs.begin() + static_cast<long>(g * per_group),
                               inputs.begin() + static_cast<long>((g + 1) * per_group));
      std::vector<std::optional<Ct>> owned;
      for (std::size_t i = 0; i < program_.layers().size(); ++i) {
        const auto start = std::chrono::steady_clock::now();
        std::vector<std::optional<Ct>> next = run_layer(i, x, st, st.layers[i].ops);
        owned = std::move(next);
        x.clear();
        for (const auto& c : owned) x.push_back(c ? &*c : nullptr);
        st.layers[i].seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      }
      if (program_.layers().empty()) {
        for (const Ct* c : x) outputs.emplace_back(*c);
      } else {
        for (auto& c : owned) outputs.push_back(std::move(c));
      }
    }
    return outputs;
  }

 private:
  struct Prepared {
    std::vector<Pt> units;                 // aligned with the layer's units
    std::vector<std::optional<Pt>> bias;   // tile: per out tile; diagonal: one
    std::optional<Pt> mask;                // tile rebuild
    // Per bias: an output with no live unit, which is its bias alone. The executor encrypts
    // such a bias once, under its own backend's key (constant()), and copies it in each run.
    std::vector<std::uint8_t> constant;
    std::size_t level = 0;                 // map layer, on demand: where its terms are encoded
    double unit_scale = 0.0;               // ... and at which scale
  };

  void prepare(std::vector<Prepared>& prepared) {
    const std::size_t top = program_.input_level();
    if (top > backend_.top_level()) {
      throw ckks::LevelError("the program takes inputs at level " + std::to_string(top) +
                             ", above the backend's top level " +
                             std::to_string(backend_.top_level()));
    }
    program_.level_schedule(top);  // LevelError when the program runs out of levels
    if (program_.refreshes() > 0 && !backend_.can_refresh()) {
      throw ckks::MissingKeyError("the program refreshes ciphertexts (" +
                                  std::to_string(program_.refreshes()) +
                                  " refreshes) but the backend has no bootstrapper");
    }
    input_level_ = top;
    std::size_t level = top;
    double scale = backend_.default_scale();
    const std::size_t slots = program_.slots();
    for (std::size_t index = 0; index < program_.layers().size(); ++index) {
      const Layer& layer = program_.layers()[index];
      const std::vector<std::uint8_t> live_in = program_.live_inputs(index);
      Prepared p;
      if (const auto* t = std::get_if<TileLinear>(&layer)) {
        if (t->rebuild_input) {
          std::vector<double> mask(slots, 0.0);
          const TileShape3& s = program_.tile_shape();
          for (std::size_t i = 0; i < s.outer; ++i) {
            for (std::size_t k = 0; k < s.batch; ++k) mask[i * s.inner * s.batch + k] = 1.0;
          }
          p.mask = encode(mask, level, backend_.prime(level));
          scale = scale * backend_.prime(level) / backend_.prime(level);
          --level;
        }
        const double q = backend_.prime(level);
        for (const TileUnit& u : t->units) p.units.push_back(encode(u.values, level, q));
        scale = scale * q / q;
        --level;
        std::vector<std::uint8_t> has_unit(t->out_tiles, 0);
        for (const TileUnit& u : t->units) has_unit[u.out_tile] |= live_in[u.in_tile];
        for (std::size_t ot = 0; ot < t->bias_nonzero.size(); ++ot) {
          p.bias.push_back(t->bias_nonzero[ot] ? std::optional<Pt>(encode(t->bias[ot], level, scale))
                                               : std::nullopt);
          // An output tile with no live unit is its bias alone.
          p.constant.push_back(p.bias.back() && !has_unit[ot]);
        }
      } else if (const auto* d = std::get_if<DiagonalLinear>(&layer)) {
        const double q = backend_.prime(level);
        for (const DiagonalUnit& u : d->units) p.units.push_back(encode(u.values, level, q));
        scale = scale * q / q;
        --level;
        if (!d->bias.empty()) {
          p.bias.push_back(encode(d->bias, level, scale));
          p.constant.push_back(!live_in[0] || d->units.empty());
        }
      } else if (const auto* m = std::get_if<MapLinear>(&layer)) {
        const double q = backend_.prime(level);
        std::vector<double> full(slots);
        p.level = level;
        p.unit_scale = q;
        if (encoding_ == Encoding::kAtSetup) {
          for (const MapTerm& term : m->terms) p.units.push_back(encode(term_slots(term, full), level, q));
        }
        scale = scale * q / q;
        --level;
        std::vector<std::uint8_t> has_term(m->out_ciphertexts, 0);
        for (const MapTerm& term : m->terms) has_term[term.out] |= live_in[term.in];
        for (std::size_t o = 0; o < m->out_ciphertexts; ++o) {
          const bool biased = o < m->bias.size() && !m->bias[o].empty();
          if (biased) {
            const std::vector<double>& b = m->bias[o];
            for (std::size_t j = 0; j < slots; ++j) full[j] = b[j % b.size()];
          }
          p.bias.push_back(biased ? std::optional<Pt>(encode(full, level, scale)) : std::nullopt);
          p.constant.push_back(biased && !has_term[o]);
        }
      } else if (std::holds_alternative<RotateSum>(layer)) {
        // No plaintext, no level.
      } else if (const auto* r = std::get_if<Refresh>(&layer)) {
        if (backend_.refresh_level() != r->to_level) {
          throw ckks::MismatchError("'" + r->name + "' leaves level " + std::to_string(r->to_level) +
                                    " but the backend's bootstrapper leaves " +
                                    std::to_string(backend_.refresh_level()) +
                                    "; build it with the program's bootstrap configuration");
        }
        level = r->to_level;  // the scale is kept
      } else {
        scale = scale * scale / backend_.prime(level);
        --level;
      }
      prepared.push_back(std::move(p));
    }
  }

  // A map term's slot vector, pre-rotated right by its giant step: rot(d, -g) * rot(x, b),
  // rotated by g, is d * rot(x, b + g). Written into `full` (slots long).
  static const std::vector<double>& term_slots(const MapTerm& term, std::vector<double>& full) {
    term.fill_slots(full, term.giant);
    return full;
  }

  Pt encode(const std::vector<double>& v, std::size_t level, double scale) {
    Pt p = backend_.encode(v, level, scale);
    plaintext_bytes_ += backend_.bytes(p);
    ++plaintext_count_;
    return p;
  }

  // Bytes of one ciphertext of `parts` polynomials at `level`.
  std::size_t ciphertext_bytes(std::size_t parts, std::size_t level) const {
    return parts * (level + 1) * program_.parameters().poly_degree * 8;
  }

  // `count` ciphertexts held at once, `bytes` in all (default: two-part ciphertexts at
  // `level`). The two peaks are kept apart: the most ciphertexts and the most bytes need not
  // coincide.
  void note_held(RunStats& st, std::size_t count, std::size_t level,
                 std::optional<std::size_t> bytes = std::nullopt) const {
    st.peak_ciphertexts = std::max(st.peak_ciphertexts, count);
    st.peak_ciphertext_bytes =
        std::max(st.peak_ciphertext_bytes, bytes ? *bytes : count * ciphertext_bytes(2, level));
  }

  static std::size_t live(const std::vector<const Ct*>& v) {
    std::size_t n = 0;
    for (const Ct* c : v) n += c != nullptr;
    return n;
  }

  // body(i) for every present x[i], one ciphertext per thread. The present ones are listed
  // first, so the threads share only real work, and a lone one runs on the calling thread,
  // where its operations split their primes over the threads instead.
  template <class Body>
  void for_each_present(const std::vector<const Ct*>& x, Body&& body) const {
    std::vector<std::size_t> present;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (x[i]) present.push_back(i);
    }
    backend_.parallel_for(present.size(), [&](std::size_t k) { body(present[k]); });
  }

  // One fused pass over sum_i cts[i] * pts[i], lazily reduced; counted as the products and adds
  // it replaces.
  Ct sum_of_products(const std::vector<const Ct*>& cts, const std::vector<const Pt*>& pts,
                     OpCounts& ops) {
    ops.mul_plain += cts.size();
    ops.add += cts.size() - 1;
    return backend_.mul_plain_sum(cts, pts);
  }

  // The same sum with its terms split across the backend's threads when there are enough of
  // them: each thread fuses a share, the shares are added. Exact arithmetic: the same bits,
  // and the same counts (n products, n - 1 additions).
  Ct parallel_sum_of_products(const std::vector<const Ct*>& cts,
                              const std::vector<const Pt*>& pts, OpCounts& ops) {
    const std::size_t threads = backend_.threads();
    if (threads < 2 || cts.size() < 2 * threads) return sum_of_products(cts, pts, ops);
    std::vector<std::optional<Ct>> shares(threads);
    backend_.parallel_for(threads, [&](std::size_t k) {
      const std::size_t lo = cts.size() * k / threads, hi = cts.size() * (k + 1) / threads;
      shares[k] = backend_.mul_plain_sum(
          std::vector<const Ct*>(cts.begin() + static_cast<long>(lo), cts.begin() + static_cast<long>(hi)),
          std::vector<const Pt*>(pts.begin() + static_cast<long>(lo), pts.begin() + static_cast<long>(hi)));
    });
    for (std::size_t k = 1; k < threads; ++k) backend_.add_inplace(*shares[0], *shares[k]);
    ops.mul_plain += cts.size();
    ops.add += cts.size() - 1;
    return std::move(*shares[0]);
  }

  // One giant-step block of a baby-step giant-step layer (diagonal or map): the fused sum of
  // products, rescaled once, rotated by the giant step, added into `total`. Returns true when
  // the block started `total`.
  bool add_giant_block(const std::vector<const Ct*>& cts, const std::vector<const Pt*>& pts,
                       long giant, std::optional<Ct>& total, OpCounts& ops) {
    return add_block_sum(sum_of_products(cts, pts, ops), giant, total, ops);
  }

  // The rest of a giant-step block once its sum of products exists: rescale, rotate by the
  // giant step, add into `total`. Returns true when the block started `total`.
  bool add_block_sum(const Ct& sum, long giant, std::optional<Ct>& total, OpCounts& ops) {
    Ct block = backend_.rescale(sum);
    ++ops.rescale;
    if (giant != 0) {
      block = backend_.rotate(block, giant);
      ++ops.rotate;
    }
    if (total) {
      backend_.add_inplace(*total, block);
      ++ops.add;
      return false;
    }
    total = std::move(block);
    return true;
  }

  // Sum over `extent` slots spaced `stride` apart, by log2(extent) rotate-and-adds. A negative
  // stride replicates instead (after a mask).
  void rotate_and_add(Ct& c, std::size_t extent, long stride, OpCounts& ops) {
    for (std::size_t m = 1; m < extent; m <<= 1) {
      Ct r = backend_.rotate(c, stride * static_cast<long>(m));
      backend_.add_inplace(c, r);
      ++ops.rotate;
      ++ops.add;
    }
  }

  std::vector<std::optional<Ct>> run_layer(std::size_t index, const std::vector<const Ct*>& x,
                                           RunStats& st, OpCounts& ops) {
    const Layer& layer = program_.layers()[index];
    const Prepared& prep = (*prepared_)[index];
    if (const auto* t = std::get_if<TileLinear>(&layer)) return run_tile(*t, prep, x, st, ops);
    if (const auto* d = std::get_if<DiagonalLinear>(&layer)) return run_diagonal(*d, prep, x, st, ops);
    if (const auto* m = std::get_if<MapLinear>(&layer)) return run_map(*m, prep, x, st, ops);
    if (const auto* r = std::get_if<RotateSum>(&layer)) {
      const bool finish_squares = index > 0 && program_.defers_relinearization(index - 1);
      return run_window_sum(*r, x, finish_squares, st, ops);
    }
    std::vector<std::optional<Ct>> y(x.size());
    if (std::holds_alternative<Refresh>(layer)) {
      for (std::size_t i = 0; i < x.size(); ++i) {
        if (!x[i]) continue;
        y[i] = backend_.refresh(*x[i]);
        ++ops.refresh;
      }
      return y;
    }
    // Squares of different ciphertexts are independent: one per thread (a single one splits
    // its primes over the threads instead: for_each_present). Deferred: the window sum after
    // relinearizes and rescales its folded sums (Program::defers_relinearization).
    const bool defer = program_.defers_relinearization(index);
    for_each_present(x, [&](std::size_t i) {
      y[i] = defer ? backend_.square_unrelinearized(*x[i])
                   : backend_.rescale(backend_.square(*x[i]));
    });
    const std::size_t squared = live(x);
    // Each input and its square are held together at the end: the square rescaled one level
    // down, or with three parts at the input's level when its relinearization is deferred.
    if (squared > 0) {
      std::size_t level = 0;
      for (const Ct* c : x) {
        if (c) level = backend_.level(*c);
      }
      const std::size_t square_bytes =
          defer ? ciphertext_bytes(3, level) : ciphertext_bytes(2, level > 0 ? level - 1 : 0);
      note_held(st, 2 * squared, level,
                squared * (ciphertext_bytes(2, level) + square_bytes));
    }
    ops.multiply += squared;
    ops.relinearize += defer ? 0 : squared;
    ops.rescale += defer ? 0 : squared;
    return y;
  }

  // Output tiles (and the rebuilt input tiles) are independent: they run on the backend's
  // threads, each tile's operations on one thread. Counts are summed per tile, and the held
  // ciphertexts are those of the serial order (one accumulator at a time), so both are the
  // same for every thread count; so are the results (the arithmetic is exact).
  std::vector<std::optional<Ct>> run_tile(const TileLinear& t, const Prepared& prep,
                                          std::vector<const Ct*> x, RunStats& st,
                                          OpCounts& ops) {
    const TileShape3& s = program_.tile_shape();
    std::vector<std::optional<Ct>> rebuilt;
    if (t.rebuild_input) {
      rebuilt.resize(x.size());
      std::vector<OpCounts> rebuild_ops(x.size());
      for_each_present(x, [&](std::size_t i) {
        OpCounts& o = rebuild_ops[i];
        rebuilt[i] = backend_.rescale(backend_.mul_plain(*x[i], *prep.mask));
        ++o.mul_plain;
        ++o.rescale;
        rotate_and_add(*rebuilt[i], s.inner, -static_cast<long>(s.batch), o);
      });
      for (std::size_t i = 0; i < x.size(); ++i) {
        ops += rebuild_ops[i];
        if (rebuilt[i]) x[i] = &*rebuilt[i];
      }
    }
    const bool outer = t.sum == SumDim::kOuter;
    const std::size_t extent = outer ? s.outer : s.inner;
    const long stride = static_cast<long>(outer ? s.inner * s.batch : s.batch);
    const std::size_t held_in = live(x);

    // Each output tile's live terms (units are sorted by output tile).
    std::vector<std::vector<const Ct*>> cts(t.out_tiles);
    std::vector<std::vector<const Pt*>> pts(t.out_tiles);
    for (std::size_t u = 0; u < t.units.size(); ++u) {
      const Ct* in = x[t.units[u].in_tile];
      if (!in) continue;
      cts[t.units[u].out_tile].push_back(in);
      pts[t.units[u].out_tile].push_back(&prep.units[u]);
    }
    // Tiles that are their bias alone: encrypted here, so that the threads only read them.
    for (std::size_t ot = 0; ot < t.out_tiles; ++ot) {
      if (cts[ot].empty() && prep.bias[ot]) ensure_constant(prep, ot);
    }

    // With as many working tiles as threads, the tiles run in parallel; with fewer (a pruned
    // layer may keep one), they run one by one and each splits its terms over the threads.
    std::size_t working = 0;
    for (const auto& c : cts) working += !c.empty();
    const bool by_tile = working >= backend_.threads();
    std::vector<std::optional<Ct>> y(t.out_tiles);
    std::vector<OpCounts> tile_ops(t.out_tiles);
    auto run_one = [&](std::size_t ot) {
      OpCounts& o = tile_ops[ot];
      if (!cts[ot].empty()) {
        Ct acc = backend_.rescale(by_tile ? sum_of_products(cts[ot], pts[ot], o)
                                          : parallel_sum_of_products(cts[ot], pts[ot], o));
        ++o.rescale;
        rotate_and_add(acc, extent, stride, o);
        if (prep.bias[ot]) {
          backend_.add_plain_inplace(acc, *prep.bias[ot]);
          ++o.add_plain;
        }
        y[ot] = std::move(acc);
      } else if (prep.bias[ot]) {
        y[ot] = constant(prep, ot);
        ++o.constant;
      }
    };
    if (by_tile) {
      backend_.parallel_for(t.out_tiles, run_one);
    } else {
      for (std::size_t ot = 0; ot < t.out_tiles; ++ot) run_one(ot);
    }
    std::size_t held_out = 0;
    for (std::size_t ot = 0; ot < t.out_tiles; ++ot) {
      ops += tile_ops[ot];
      // Before its rescale, the accumulator sits one level above its output.
      if (!cts[ot].empty()) note_held(st, held_in + held_out + 1, backend_.level(*y[ot]) + 1);
      held_out += y[ot].has_value();
    }
    return y;
  }

  std::vector<std::optional<Ct>> run_diagonal(const DiagonalLinear& d, const Prepared& prep,
                                              const std::vector<const Ct*>& x, RunStats& st,
                                              OpCounts& ops) {
    std::vector<std::optional<Ct>> y(1);
    if (!x[0] || d.units.empty()) {  // zero input or no diagonal: only the bias remains
      if (!prep.bias.empty()) {
        y[0] = constant(prep, 0);
        ++ops.constant;
      }
      return y;
    }
    const std::size_t n1 = d.baby;
    // Baby steps: one hoisted batch of rotations of the input.
    std::vector<long> steps;
    for (const DiagonalUnit& u : d.units) {
      const long b = static_cast<long>(u.index % n1);
      if (b != 0 && std::find(steps.begin(), steps.end(), b) == steps.end()) steps.push_back(b);
    }
    std::sort(steps.begin(), steps.end());
    std::map<long, Ct> baby;
    if (!steps.empty()) {
      std::vector<Ct> rotated = backend_.rotate_hoisted(*x[0], steps);
      ops.rotate += steps.size();
      for (std::size_t i = 0; i < steps.size(); ++i) baby.emplace(steps[i], std::move(rotated[i]));
    }
    note_held(st, baby.size() + 3, backend_.level(*x[0]));
    std::optional<Ct> total;
    std::size_t u = 0;
    while (u < d.units.size()) {
      const std::size_t giant = d.units[u].index / n1;
      std::vector<const Ct*> cts;
      std::vector<const Pt*> pts;
      for (; u < d.units.size() && d.units[u].index / n1 == giant; ++u) {
        const long b = static_cast<long>(d.units[u].index % n1);
        cts.push_back(b == 0 ? x[0] : &baby.at(b));
        pts.push_back(&prep.units[u]);
      }
      add_giant_block(cts, pts, static_cast<long>(giant * n1), total, ops);
    }
    if (d.n_out < d.n_in) rotate_and_add(*total, d.n_in / d.n_out, static_cast<long>(d.n_out), ops);
    if (!prep.bias.empty()) {
      backend_.add_plain_inplace(*total, *prep.bias[0]);
      ++ops.add_plain;
    }
    y[0] = std::move(total);
    return y;
  }

  // Map layer: hoisted baby-step rotations per input, then per output one fused sum of
  // products per giant step, rescaled, rotated by the giant step and added up.
  std::vector<std::optional<Ct>> run_map(const MapLinear& m, const Prepared& prep,
                                         const std::vector<const Ct*>& x, RunStats& st,
                                         OpCounts& ops) {
    std::map<std::pair<std::uint32_t, std::size_t>, Ct> baby;  // (input, step) -> rotated
    std::vector<std::vector<long>> steps(m.in_ciphertexts);
    for (const MapTerm& t : m.terms) {
      if (t.baby && x[t.in]) steps[t.in].push_back(static_cast<long>(t.baby));
    }
    std::size_t held = live(x);
    for (std::uint32_t i = 0; i < m.in_ciphertexts; ++i) {
      auto& s = steps[i];
      if (s.empty()) continue;
      std::sort(s.begin(), s.end());
      s.erase(std::unique(s.begin(), s.end()), s.end());
      std::vector<Ct> rotated = backend_.rotate_hoisted(*x[i], s);
      ops.rotate += s.size();
      held += s.size();
      for (std::size_t k = 0; k < s.size(); ++k) {
        baby.emplace(std::make_pair(i, static_cast<std::size_t>(s[k])), std::move(rotated[k]));
      }
    }
    if (!baby.empty()) note_held(st, held, backend_.level(baby.begin()->second));

    // Output ciphertexts are independent once the baby steps exist: they run on the backend's
    // threads (terms are sorted by output, then giant step). As for tiles, counts and held
    // ciphertexts are summed in the serial order afterwards.
    std::vector<std::size_t> begin(m.out_ciphertexts + 1, 0);
    for (const MapTerm& t : m.terms) ++begin[t.out + 1];
    for (std::size_t o = 0; o < m.out_ciphertexts; ++o) begin[o + 1] += begin[o];
    std::vector<std::uint8_t> has_live(m.out_ciphertexts, 0);
    for (const MapTerm& t : m.terms) has_live[t.out] |= x[t.in] != nullptr;
    for (std::size_t o = 0; o < m.out_ciphertexts; ++o) {
      if (!has_live[o] && prep.bias[o]) ensure_constant(prep, o);  // the threads only copy them
    }
    // With fewer working outputs than threads, each output's giant-step blocks are split into
    // `shares` runs of whole blocks, one per thread, added up at the end. Additions are exact,
    // so the bits are those of the serial order; so are the counts (a share that starts a
    // total saves the addition that joining it costs). Outputs without terms (pruned whole,
    // or fed only by known-zero inputs) take no thread.
    std::size_t working = 0;
    for (std::size_t o = 0; o < m.out_ciphertexts; ++o) working += has_live[o] != 0;
    const std::size_t shares =
        std::max<std::size_t>(1, backend_.threads() / std::max<std::size_t>(1, working));
    std::vector<std::size_t> cut((shares + 1) * m.out_ciphertexts);  // term ranges of shares
    for (std::size_t o = 0; o < m.out_ciphertexts; ++o) {
      std::size_t* c = &cut[o * (shares + 1)];
      c[0] = begin[o];
      for (std::size_t k = 1; k < shares; ++k) {
        // The first block boundary at or after the k-th equal part of the output's terms.
        std::size_t u = std::max(c[k - 1], begin[o] + (begin[o + 1] - begin[o]) * k / shares);
        while (u > begin[o] && u < begin[o + 1] && m.terms[u].giant == m.terms[u - 1].giant) ++u;
        c[k] = u;
      }
      c[shares] = begin[o + 1];
    }
    std::vector<MapShare> work(m.out_ciphertexts * shares);
    const auto range = [&](std::size_t task) {
      const std::size_t o = task / shares, k = task % shares;
      return std::make_pair(cut[o * (shares + 1) + k], cut[o * (shares + 1) + k + 1]);
    };
    if (encoding_ == Encoding::kAtSetup) {
      // One bundle of shares per thread, dealt round-robin: a bundle's giant-step blocks go
      // through the fused products together, so blocks of different outputs that read the
      // same inputs share each slice of them in the cache (conv1's outputs all read the same
      // shifted inputs). Only shares with a term on a present input are dealt, so that empty
      // ones (outputs pruning emptied) cannot leave a thread idle while another does all the
      // work.
      std::vector<std::size_t> busy;
      for (std::size_t task = 0; task < work.size(); ++task) {
        const auto [lo, hi] = range(task);
        for (std::size_t u = lo; u < hi; ++u) {
          if (x[m.terms[u].in]) {
            busy.push_back(task);
            break;
          }
        }
      }
      const std::size_t bundles = std::min(backend_.threads(), busy.size());
      backend_.parallel_for(bundles, [&](std::size_t b) {
        std::vector<std::size_t> tasks;
        for (std::size_t k = b; k < busy.size(); k += bundles) tasks.push_back(busy[k]);
        run_map_bundle(m, prep, x, baby, tasks, range, work);
      });
    } else {
      run_map_on_demand(m, prep, x, baby, range, work);
    }
    std::vector<std::optional<Ct>> y(m.out_ciphertexts);
    for (std::size_t o = 0; o < m.out_ciphertexts; ++o) {
      std::optional<Ct>& total = y[o];
      OpCounts& share_ops = work[o * shares].ops;
      for (std::size_t k = 0; k < shares; ++k) {
        MapShare& w = work[o * shares + k];
        if (k > 0) share_ops += w.ops;
        st.encoded += w.encoded;
        st.encode_seconds += w.encode_seconds;
        if (!w.total) continue;
        if (!total) {
          total = std::move(w.total);
        } else {
          backend_.add_inplace(*total, *w.total);
          ++share_ops.add;
        }
      }
      if (total && prep.bias[o]) {
        backend_.add_plain_inplace(*total, *prep.bias[o]);
        ++share_ops.add_plain;
      } else if (!total && prep.bias[o]) {
        total = constant(prep, o);
        ++share_ops.constant;
      }
    }
    std::size_t held_out = 0;
    for (std::size_t o = 0; o < m.out_ciphertexts; ++o) {
      ops += work[o * shares].ops;
      if (has_live[o] && y[o]) note_held(st, held + held_out + 1, backend_.level(*y[o]));
      held_out += y[o].has_value();
    }
    return y;
  }

  // One share of a map layer's output: a run of whole giant-step blocks, summed on one thread.
  struct MapShare {
    OpCounts ops;
    std::size_t encoded = 0;
    double encode_seconds = 0.0;
    std::optional<Ct> total;
  };
  using BabySteps = std::map<std::pair<std::uint32_t, std::size_t>, Ct>;

  // Shares `tasks` of a map layer with resident plaintexts (`range(task)`: its terms): the
  // sums of products of up to kBlocksAtOnce giant-step blocks at once, of any of the shares
  // (multiply_plain_sums reads the inputs once per slice of coefficients for all of them), then
  // per block the rescale, giant rotation and addition of add_giant_block into its own share,
  // in each share's order: the same bits and counts as one share at a time.
  template <class Range>
  void run_map_bundle(const MapLinear& m, const Prepared& prep, const std::vector<const Ct*>& x,
                      const BabySteps& baby, const std::vector<std::size_t>& tasks,
                      const Range& range, std::vector<MapShare>& work) {
    constexpr std::size_t kBlocksAtOnce = 32;
    std::vector<std::vector<const Ct*>> cts;
    std::vector<std::vector<const Pt*>> pts;
    std::vector<long> giants;
    std::vector<std::size_t> owner;
    const auto flush = [&] {
      if (cts.empty()) return;
      const std::vector<Ct> sums = backend_.mul_plain_sums(cts, pts);
      for (std::size_t b = 0; b < sums.size(); ++b) {
        MapShare& w = work[owner[b]];
        w.ops.mul_plain += cts[b].size();  // as sum_of_products counts them
        w.ops.add += cts[b].size() - 1;
        add_block_sum(sums[b], giants[b], w.total, w.ops);
      }
      cts.clear();
      pts.clear();
      giants.clear();
      owner.clear();
    };
    for (const std::size_t task : tasks) {
      const auto [lo, hi] = range(task);
      for (std::size_t u = lo; u < hi;) {
        const std::size_t giant = m.terms[u].giant;
        std::vector<const Ct*> c;
        std::vector<const Pt*> p;
        for (; u < hi && m.terms[u].giant == giant; ++u) {
          const MapTerm& t = m.terms[u];
          if (!x[t.in]) continue;
          c.push_back(t.baby ? &baby.at({t.in, t.baby}) : x[t.in]);
          p.push_back(&prep.units[u]);
        }
        if (c.empty()) continue;
        cts.push_back(std::move(c));
        pts.push_back(std::move(p));
        giants.push_back(static_cast<long>(giant));
        owner.push_back(task);
        if (cts.size() == kBlocksAtOnce) flush();
      }
    }
    flush();
  }

  // The same with plaintexts encoded on demand: each share on a thread of its own, one giant
  // step's plaintexts at a time, encoded right before their products.
  template <class Range>
  void run_map_on_demand(const MapLinear& m, const Prepared& prep,
                         const std::vector<const Ct*>& x, const BabySteps& baby,
                         const Range& range, std::vector<MapShare>& work) {
    backend_.parallel_for(work.size(), [&](std::size_t task) {
      const auto [lo, hi] = range(task);
      MapShare& w = work[task];
      std::vector<Pt> block;
      std::vector<double> full(program_.slots());
      for (std::size_t u = lo; u < hi;) {
        const std::size_t giant = m.terms[u].giant;
        std::vector<const Ct*> cts;
        std::vector<const Pt*> pts;
        std::vector<std::size_t> live_terms;
        for (; u < hi && m.terms[u].giant == giant; ++u) {
          const MapTerm& t = m.terms[u];
          if (!x[t.in]) continue;
          cts.push_back(t.baby ? &baby.at({t.in, t.baby}) : x[t.in]);
          live_terms.push_back(u);
        }
        if (cts.empty()) continue;
        const auto start = std::chrono::steady_clock::now();
        block.clear();
        block.reserve(live_terms.size());
        for (std::size_t t : live_terms) {
          block.push_back(
              backend_.encode(term_slots(m.terms[t], full), prep.level, prep.unit_scale));
        }
        for (const Pt& pt : block) pts.push_back(&pt);
        w.encoded += block.size();
        w.encode_seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        add_giant_block(cts, pts, static_cast<long>(giant), w.total, w.ops);
      }
    });
  }

  // Window sums, each by the binary method: W_2m = W_m + rot(W_m, m * stride) and
  // W_m+1 = x + rot(W_m, stride), most significant bit first (window_sum_steps).
  // `finish_squares`: the inputs are unrelinearized, unrescaled squares; each folded sum is
  // relinearized and rescaled before its windows.
  std::vector<std::optional<Ct>> run_window_sum(const RotateSum& r,
                                                const std::vector<const Ct*>& x,
                                                bool finish_squares, RunStats& st,
                                                OpCounts& ops) {
    // Fold the sub-maps first (additions; a known zero adds nothing), then sum the windows.
    const std::size_t n_out = x.size() / r.fold;
    std::vector<std::optional<Ct>> folded(r.fold > 1 ? n_out : 0);
    std::vector<const Ct*> in = x;
    if (r.fold > 1) {
      in.assign(n_out, nullptr);
      for (std::size_t o = 0; o < n_out; ++o) {
        for (std::size_t m = 0; m < r.fold; ++m) {
          const Ct* part = x[o + m * n_out];
          if (!part) continue;
          if (!folded[o]) {
            folded[o] = *part;
          } else {
            backend_.add_inplace(*folded[o], *part);
            ++ops.add;
          }
        }
        if (folded[o]) in[o] = &*folded[o];
      }
    }
    std::vector<std::optional<Ct>> finished(finish_squares ? n_out : 0);
    if (finish_squares) {
      for_each_present(in, [&](std::size_t o) {
        finished[o] = backend_.rescale(backend_.relinearize(*in[o]));
      });
      for (std::size_t o = 0; o < n_out; ++o) {
        if (!finished[o]) continue;
        in[o] = &*finished[o];
        ++ops.relinearize;
        ++ops.rescale;
      }
    }
    // Each ciphertext's chain of rotations is serial, but the chains are independent: one per
    // thread. Counts are per chain, summed afterwards.
    std::vector<std::optional<Ct>> y(n_out);
    std::vector<OpCounts> chain_ops(n_out);
    for_each_present(in, [&](std::size_t c) {
      OpCounts& o = chain_ops[c];
      Ct acc = *in[c];
      for (const auto& [count, stride] : r.windows) {
        const Ct base = acc;
        std::size_t m = 1;
        for (int bit = static_cast<int>(std::bit_width(count)) - 2; bit >= 0; --bit) {
          Ct rotated = backend_.rotate(acc, static_cast<long>(m * stride));
          backend_.add_inplace(acc, rotated);
          m *= 2;
          ++o.rotate;
          ++o.add;
          if ((count >> bit) & 1U) {
            Ct shifted = backend_.rotate(acc, static_cast<long>(stride));
            acc = base;
            backend_.add_inplace(acc, shifted);
            m += 1;
            ++o.rotate;
            ++o.add;
          }
        }
      }
      y[c] = std::move(acc);
    });
    for (std::size_t c = 0; c < n_out; ++c) {
      ops += chain_ops[c];
      if (!y[c]) continue;
      const std::size_t count = live(x) + live(in) * (r.fold > 1) + 3;
      const std::size_t level = backend_.level(*y[c]);
      if (!finish_squares) {
        note_held(st, count, level);
        continue;
      }
      // The inputs (and their folded sums) are three-part products one level up, held beside
      // the relinearized sums and the chain's working ciphertexts.
      std::size_t folded_count = 0, finished_count = 0;
      for (const auto& f : folded) folded_count += f.has_value();
      for (const auto& f : finished) finished_count += f.has_value();
      note_held(st, count, level,
                (live(x) + folded_count) * ciphertext_bytes(3, level + 1) +
                    (finished_count + 3) * ciphertext_bytes(2, level));
    }
    return y;
  }

  // The encryption of layer `prep`'s bias `k` (an output that is its bias alone), made on
  // first use under this executor's key and kept. Runs of one executor may overlap (several
  // Python threads), hence the lock and the copy out.
  Ct constant(const Prepared& prep, std::size_t k) {
    const std::lock_guard lock(*constants_mutex_);
    return cached_constant(prep, k);
  }
  // Makes it now (before a parallel section, whose threads then only copy it).
  void ensure_constant(const Prepared& prep, std::size_t k) {
    const std::lock_guard lock(*constants_mutex_);
    cached_constant(prep, k);
  }
  const Ct& cached_constant(const Prepared& prep, std::size_t k) {
    const auto layer = static_cast<std::size_t>(&prep - prepared_->data());
    std::vector<std::optional<Ct>>& cache = constants_[layer];
    if (cache.size() < prep.bias.size()) cache.resize(prep.bias.size());
    if (!cache[k]) cache[k] = backend_.encrypt(*prep.bias[k]);
    return *cache[k];
  }

  const Program& program_;
  Backend& backend_;
  Encoding encoding_ = Encoding::kAtSetup;
  // Key-independent, hence shared by executors of the same program and context.
  std::shared_ptr<const std::vector<Prepared>> prepared_;
  std::vector<std::vector<std::optional<Ct>>> constants_;  // per layer, per bias: constant()
  std::unique_ptr<std::mutex> constants_mutex_ = std::make_unique<std::mutex>();
  std::size_t plaintext_bytes_ = 0;
  std::size_t plaintext_count_ = 0;
  std::size_t input_level_ = 0;
};

}  // namespace fheprune::runtime

"""Encrypted training kernels, written once against :class:`~.backend.Server`.

One training step on a ciphertext of samples (layout in :mod:`.layout`), with the levels each
stage spends (data and weights enter at ``L - 1``; data the server must mask enter at the top
level ``L`` and the mask brings them to ``L - 1``):

=====================  ======================================  =========================
stage                  what                                    levels
=====================  ======================================  =========================
forward                ``z = sum_t X_t * D_t``                 1
softmax                :mod:`.softmax`                         :func:`softmax_depth`
error                  ``E = P - Y``                           0
gradient               ``G_t = sum over blocks of X_t * E``    1 (plus log2(blocks) rotations)
update                 Nesterov, learning rate folded in       1
=====================  ======================================  =========================

The HE-friendly score of a sample is the L1 EL2N score ``sum_c |P_c - Y_c|``. For a
probability vector and a one-hot label it equals ``2 (1 - P_y)`` exactly, so we compute it
with one product and a class sum instead of a sign polynomial per class.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from numpy.polynomial import chebyshev as cheb
from numpy.typing import NDArray

from fheprune.private_training.backend import Server, Vector
from fheprune.private_training.layout import SampleLayout
from fheprune.private_training.softmax import SoftmaxApprox

C = TypeVar("C")


def rotation_steps(layout: SampleLayout) -> list[int]:
    """Every rotation the kernels use (the Galois keys the client must make)."""
    k, c = layout.lanes, layout.classes
    steps = [1 << i for i in range(k.bit_length() - 1)]  # class sums inside a block
    steps.append(-(c - 1))  # moves a block's sum to its last class lane before broadcasting
    b = k
    while b < layout.slots:  # sums over blocks (and whole-block moves)
        steps.append(b)
        b *= 2
    return steps


def forward(server: Server[C], xs: list[C], diagonals: list[C]) -> C:
    """Logits: one relinearization for the ``k`` products."""
    return server.mul_sum(list(zip(xs, diagonals, strict=True)))


def power_series(server: Server[C], z: C, coeffs: tuple[float, ...]) -> C:
    """``sum_i a_i z^i`` for degree <= 7 at depth 3, constants folded into the products."""
    powers = {1: z}
    if len(coeffs) > 2:
        powers[2] = server.mul(z, z)
    if len(coeffs) > 4:
        powers[4] = server.mul(powers[2], powers[2])
    total: C | None = None
    for i, a in enumerate(coeffs[1:], start=1):
        bits = [1 << j for j in range(3) if i >> j & 1]
        term = server.mul_const(powers[bits[0]], a)  # fold into the lowest power
        for b in bits[1:]:
            term = server.mul(term, powers[b])
        total = term if total is None else server.add(total, term)
    assert total is not None
    return server.add_const(total, coeffs[0])


def chebyshev_basis(server: Server[C], t: C, degree: int) -> dict[int, C]:
    """``T_1 .. T_degree`` of ``t`` with ``T_(m+n) = 2 T_m T_n - T_(m-n)``, each index split
    as evenly as possible (``T_n`` at depth ceil(log2 n))."""
    terms: dict[int, C] = {1: t}
    for n in range(2, degree + 1):
        hi = 1 << (n - 1).bit_length() - 1  # largest power of two below n
        lo = n - hi
        prod = server.mul(terms[hi], terms[lo])
        twice = server.add(prod, prod)
        diff = hi - lo
        terms[n] = server.add_const(twice, -1.0) if diff == 0 else server.sub(twice, terms[diff])
    return terms


def chebyshev_series(server: Server[C], t: C, coeffs: tuple[float, ...], baby: int = 8) -> C:
    """``sum_k c_k T_k(t)`` for ``t`` in [-1, 1], baby-step giant-step: the baby steps
    ``T_1 .. T_(baby-1)`` and the giant steps ``T_baby, T_2baby, T_4baby, ...`` are computed
    once; the series is divided by the largest giant step in the Chebyshev basis,
    ``p = r + q T_m``, recursively, until each piece is a combination of baby steps (scalar
    products only). Degree 31: 11 ciphertext products instead of 30, at the same depth
    (ceil(log2 degree) + 1)."""
    degree = len(coeffs) - 1
    if degree < baby:
        basis = chebyshev_basis(server, t, max(degree, 1))
        return _combine(server, basis, np.asarray(coeffs))
    basis = chebyshev_basis(server, t, baby)
    giants = {baby: basis.pop(baby)}
    m = baby
    while 2 * m <= degree:
        sq = server.mul(giants[m], giants[m])
        giants[2 * m] = server.add_const(server.add(sq, sq), -1.0)
        m *= 2
    return _bsgs(server, basis, giants, np.asarray(coeffs, dtype=np.float64))


def _combine(server: Server[C], basis: dict[int, C], coeffs: NDArray[np.float64]) -> C:
    """``c_0 + sum_k c_k T_k`` from computed terms: scalar products only."""
    total: C | None = None
    for k in range(1, len(coeffs)):
        if coeffs[k] == 0.0:
            continue
        term = server.mul_const(basis[k], float(coeffs[k]))
        total = term if total is None else server.add(total, term)
    if total is None:  # a constant: keep it a ciphertext at a level the caller can use
        total = server.mul_const(basis[1], 0.0)
    return server.add_const(total, float(coeffs[0]))


def _bsgs(
    server: Server[C], basis: dict[int, C], giants: dict[int, C], coeffs: NDArray[np.float64]
) -> C:
    degree = len(coeffs) - 1
    usable = [m for m in giants if m <= degree]
    if not usable:
        return _combine(server, basis, coeffs)
    m = max(usable)
    divisor = np.zeros(m + 1)
    divisor[m] = 1.0
    quotient, remainder = cheb.chebdiv(coeffs, divisor)
    q = np.atleast_1d(np.asarray(quotient, dtype=np.float64))
    r = np.atleast_1d(np.asarray(remainder, dtype=np.float64))
    high = server.mul(_bsgs(server, basis, giants, q), giants[m])
    return server.add(_bsgs(server, basis, giants, r), high)


def class_sum(server: Server[C], ct: C, lanes: int) -> C:
    """Lane 0 of every block gets the sum of the block's lanes (other lanes: partial sums)."""
    step = 1
    while step < lanes:
        ct = server.add(ct, server.rotate(ct, step))
        step *= 2
    return ct


def broadcast(server: Server[C], layout: SampleLayout, ct: C, weight: float) -> C:
    """``weight`` times lane 0 of every block, copied to the block's class lanes."""
    k, c, slots = layout.lanes, layout.classes, layout.slots
    mask = np.zeros(slots)
    mask[::k] = weight
    ct = server.rotate(server.mul_const(ct, mask), -(c - 1))
    # Lane c-1 now holds the value; window sums to the left reach lanes 0..c-1 only.
    return class_sum(server, ct, k)


def softmax(server: Server[C], layout: SampleLayout, approx: SoftmaxApprox, z: C) -> C:
    """Probabilities on the class lanes (other lanes: junk that never reaches a gradient)."""
    u = power_series(server, z, approx.exp_coeffs)
    for _ in range(approx.squarings):
        u = server.mul(u, u)
    total = class_sum(server, u, layout.lanes)
    total = server.add_const(total, -(layout.lanes - layout.classes) * approx.pad_value)
    alpha, beta = approx.unit_map
    t = server.add_const(broadcast(server, layout, total, alpha), beta)
    y = chebyshev_series(server, t, approx.inverse_coeffs)
    for _ in range(approx.newton_steps):
        y = newton_inverse_step(server, t, y, alpha, beta)
    return server.mul(u, y)


def newton_inverse_step(server: Server[C], t: C, y: C, alpha: float, beta: float) -> C:
    """One Newton step ``y <- y (2 - S y)`` for ``1/S``, written in ``t = alpha S + beta``
    (the only broadcast copy of the sum): ``2y - (y / alpha) (t y - beta y)``. Two levels,
    like the textbook step, and no second broadcast of ``S``."""
    w = server.sub(server.mul(t, y), server.mul_const(y, beta))
    return server.sub(server.add(y, y), server.mul(server.mul_const(y, 1.0 / alpha), w))


def block_sum(server: Server[C], layout: SampleLayout, ct: C) -> C:
    """Every block gets the sum of all blocks (lane by lane)."""
    step = layout.lanes
    while step < layout.slots:
        ct = server.add(ct, server.rotate(ct, step))
        step *= 2
    return ct


def gradient(
    server: Server[C], layout: SampleLayout, xs_per_ct: list[list[C]], errors: list[C]
) -> list[C]:
    """Diagonal ``t`` of ``X^T E`` summed over the given ciphertexts of samples."""
    out = []
    for t in range(layout.lanes):
        pairs = [(xs[t], e) for xs, e in zip(xs_per_ct, errors, strict=True)]
        out.append(block_sum(server, layout, server.mul_sum(pairs)))
    return out


def nesterov(
    server: Server[C],
    weights: list[C],
    velocity: list[C],
    grads: list[C],
    step_size: float,
    momentum: float,
) -> tuple[list[C], list[C]]:
    """``v' = w - eta g``; ``w' = v' + mu (v' - v)``, one level, ``eta`` folded in."""
    new_w, new_v = [], []
    for w, v, g in zip(weights, velocity, grads, strict=True):
        level = server.level(g)
        w = server.drop_to(w, level)
        v = server.drop_to(v, level)
        new_v.append(server.sub(server.mul_const(w, 1.0), server.mul_const(g, step_size)))
        new_w.append(
            server.sub(
                server.sub(
                    server.mul_const(w, 1.0 + momentum),
                    server.mul_const(g, (1.0 + momentum) * step_size),
                ),
                server.mul_const(v, momentum),
            )
        )
    return new_w, new_v


def hefs(server: Server[C], layout: SampleLayout, probs: C, labels: C) -> C:
    """The L1 EL2N score ``2 (1 - P_y)`` on lane 0 of every block."""
    p_y = class_sum(server, server.mul(probs, labels), layout.lanes)
    return server.add_const(server.mul_const(p_y, -2.0), 2.0)


def chebyshev_check(coeffs: tuple[float, ...], t: Vector) -> Vector:
    """Cleartext twin of :func:`chebyshev_series` (for tests)."""
    return np.asarray(cheb.chebval(t, coeffs), dtype=np.float64)


def softmax_depth(approx: SoftmaxApprox) -> int:
    """Levels :func:`softmax` spends, measured by running it on the simulator."""
    from fheprune.private_training.backend import SimulatedBackend

    layout = SampleLayout(approx.lanes, approx.lanes, approx.classes)
    top = 64
    sim = SimulatedBackend(layout.slots, top)
    out = softmax(sim, layout, approx, sim.encrypt(np.zeros(layout.slots), top))
    return top - sim.level(out)

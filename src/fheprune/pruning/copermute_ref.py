"""Pure-numpy reference of the co-permutation kernel (``fheprune._core.copermute_rows_blocks``).

Same contract, objective and algorithm as the C++ kernel (``cpp/src/pruning/copermute.cpp``,
where the reading of HE-PEx Section 4.2 is explained): rows are reduced to their tile-column
occupancy, clustered into strips by balanced k-means (k = ceil(rows / strip), distance = tiles a
row newly makes non-zero in a cluster, ties by mean overlap), then improved by an exact swap
search on (non-zero tiles, sum of squared group counts); coarse-to-fine over nested strip
heights; the identity unless the exact count strictly drops. It is written for clarity, not
speed (Python loops over rows), and its random stream differs from the C++ kernel's
(``numpy.random.default_rng`` instead of ``std::mt19937_64``), so both find equally good but
not identical permutations. Used when the C++ engine is not built, and as a cross-check in tests.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fheprune.errors import InputError

__all__ = ["copermute_rows_blocks", "count_nonzero_tiles_blocks", "group_occupancy"]

BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int64]
Tiling = tuple[int, int, int]

#: Small problems get more k-means starts (as in the C++ kernel).
MAX_SMALL_RESTARTS = 15
_LLOYD_PATIENCE = 2


def _check(blocks: Sequence[ArrayLike], tilings: Sequence[Tiling]) -> list[BoolArray]:
    if len(blocks) == 0:
        raise InputError("copermute_rows needs at least one block")
    if len(blocks) != len(tilings):
        raise InputError(
            f"got {len(blocks)} blocks but {len(tilings)} tilings: give one "
            "(strip_rows, group_cols, segment_cols) per block"
        )
    arrays = [np.asarray(b) != 0 for b in blocks]
    rows = arrays[0].shape[0] if arrays[0].ndim == 2 else -1
    for i, (a, (strip, group, segment)) in enumerate(zip(arrays, tilings, strict=True)):
        if a.ndim != 2:
            raise InputError(f"block {i} must be 2-D, got shape {a.shape}")
        if a.shape[0] != rows:
            raise InputError(
                f"block {i} has {a.shape[0]} rows, but block 0 has {rows}: all blocks must "
                "share the rows being permuted"
            )
        if a.shape[1] == 0:
            raise InputError(f"block {i} has no columns")
        if strip <= 0 or group <= 0:
            raise InputError(f"block {i}: tile dimensions must be positive, got {strip}, {group}")
        seg = segment or a.shape[1]
        if a.shape[1] % seg:
            raise InputError(f"block {i}: segment_cols={seg} must divide its {a.shape[1]} columns")
    return arrays


def group_occupancy(mask: BoolArray, group: int, segment: int = 0) -> BoolArray:
    """``occ[r, g]``: row r has a non-zero in tile column g (groups restart every segment)."""
    rows, cols = mask.shape
    seg = segment or cols
    per_seg = math.ceil(seg / group)
    padded = np.zeros((rows, cols // seg, per_seg * group), dtype=bool)
    padded[:, :, :seg] = mask.reshape(rows, cols // seg, seg)
    return padded.reshape(rows, cols // seg, per_seg, group).any(axis=3).reshape(rows, -1)


def _nonzero(occ: BoolArray, strip: int, perm: IntArray | None) -> int:
    rows = occ.shape[0]
    if perm is not None:
        occ = occ[perm]
    n_strips = math.ceil(rows / strip) if rows else 0
    padded = np.zeros((n_strips * strip, occ.shape[1]), dtype=bool)
    padded[:rows] = occ
    return int(padded.reshape(n_strips, strip, -1).any(axis=1).sum())


def count_nonzero_tiles_blocks(
    blocks: Sequence[ArrayLike], tilings: Sequence[Tiling], row_perm: ArrayLike | None = None
) -> tuple[int, int]:
    """(non-zero tiles, all tiles) of the blocks, rows taken in the order ``row_perm``."""
    arrays = _check(blocks, tilings)
    rows = arrays[0].shape[0]
    perm = None
    if row_perm is not None:
        perm = np.asarray(row_perm, dtype=np.int64)
        if sorted(perm.tolist()) != list(range(rows)):
            raise InputError(f"row_perm is not a permutation of 0..{rows - 1}")
    nonzero = total = 0
    for a, (strip, group, segment) in zip(arrays, tilings, strict=True):
        occ = group_occupancy(a, group, segment)
        nonzero += _nonzero(occ, strip, perm)
        total += math.ceil(rows / strip) * occ.shape[1]
    return nonzero, total


class _Clusterer:
    """Balanced clustering of the rows of ``occ`` into clusters of fixed capacities."""

    def __init__(
        self,
        occ: BoolArray,
        caps: list[int],
        *,
        max_iter: int,
        candidates: int,
        rng: np.random.Generator,
    ) -> None:
        self.occ = occ
        self.occ_i = occ.astype(np.int64)
        self.ones = self.occ_i.sum(axis=1)
        self.n, self.k = occ.shape[0], len(caps)
        self.caps = np.asarray(caps, dtype=np.int64)
        self.max_iter = max_iter
        self.candidates = candidates
        self.rng = rng
        self.assign = np.zeros(self.n, dtype=np.int64)
        self.counts = np.zeros((self.k, occ.shape[1]), dtype=np.int64)

    def set_assignment(self, assign: IntArray) -> None:
        self.assign = assign.copy()
        self.counts = np.zeros_like(self.counts)
        np.add.at(self.counts, self.assign, self.occ_i)

    def objective(self) -> tuple[int, int]:
        """(non-zero tiles, -sum of squared counts): smaller is better."""
        return int((self.counts > 0).sum()), -int((self.counts**2).sum())

    def seeds(self) -> list[int]:
        """k-means++ on the Hamming distance between occupancies."""
        chosen = [int(self.rng.integers(self.n))]
        dist = np.full(self.n, np.iinfo(np.int64).max, dtype=np.int64)
        while True:
            d = (self.occ != self.occ[chosen[-1]]).sum(axis=1).astype(np.int64)
            dist = np.minimum(dist, d * d)
            if len(chosen) == self.k:
                return chosen
            weights = dist.astype(np.float64)
            weights[chosen] = 0.0
            if weights.sum() == 0:
                free = np.setdiff1d(np.arange(self.n), chosen)
                chosen.append(int(self.rng.choice(free)))
            else:
                chosen.append(int(self.rng.choice(self.n, p=weights / weights.sum())))

    def join_costs(self, prev: IntArray, sizes: IntArray) -> NDArray[np.float64]:
        """cost[x, c]: tiles x newly lights in c (x left out of its own cluster), minus the
        mean overlap scaled below one tile."""
        union = self.counts > 0
        fresh = self.occ_i @ (~union).T.astype(np.int64)
        overlap = (self.occ_i @ self.counts.T).astype(np.float64)
        size = np.broadcast_to(sizes.astype(np.float64), (self.n, self.k)).copy()
        members = np.flatnonzero(prev >= 0)
        for x in members:
            c = prev[x]
            others = union[c] & ~(self.occ[x] & (self.counts[c] == 1))
            fresh[x, c] = int((self.occ[x] & ~others).sum())
            overlap[x, c] -= self.ones[x]
            size[x, c] -= 1
        with np.errstate(divide="ignore", invalid="ignore"):
            sim = np.where(size > 0, overlap / size, 0.0)
        cost: NDArray[np.float64] = fresh - sim / (self.ones[:, None] + 1.0)
        return cost

    def balance(self, cost: NDArray[np.float64], a: IntArray) -> None:
        size = np.bincount(a, minlength=self.k)

        def nearest_with_room(x: int) -> tuple[float, int, int]:
            room = np.flatnonzero(size < self.caps)
            best = int(room[np.argmin(cost[x, room])])
            return float(cost[x, best] - cost[x, a[x]]), x, best

        heap = [nearest_with_room(x) for x in range(self.n) if size[a[x]] > self.caps[a[x]]]
        heapq.heapify(heap)
        while heap:
            _, x, target = heapq.heappop(heap)
            src = a[x]
            if size[src] <= self.caps[src]:
                continue
            if size[target] >= self.caps[target]:
                heapq.heappush(heap, nearest_with_room(x))
                continue
            size[src] -= 1
            size[target] += 1
            a[x] = target

    def lloyd(self) -> None:
        seeds = self.seeds()
        self.counts = self.occ_i[seeds].copy()
        sizes = np.ones(self.k, dtype=np.int64)
        prev = np.full(self.n, -1, dtype=np.int64)
        best: tuple[int, int] | None = None
        best_assign = prev
        stale = 0
        for _ in range(max(self.max_iter, 1)):
            cost = self.join_costs(prev, sizes)
            nxt = np.argmin(cost, axis=1)
            stay = prev >= 0
            keep = stay & (cost[np.arange(self.n), np.maximum(prev, 0)] == cost.min(axis=1))
            nxt[keep] = prev[keep]
            self.balance(cost, nxt)
            if np.array_equal(nxt, prev):
                break
            self.set_assignment(nxt)
            sizes = np.bincount(nxt, minlength=self.k)
            prev = nxt
            obj = self.objective()
            if best is None or obj < best:
                best, best_assign, stale = obj, nxt.copy(), 0
            else:
                stale += 1
                if stale >= _LLOYD_PATIENCE:
                    break
        self.set_assignment(best_assign)

    def local_search(self) -> None:
        """Swaps that lower the non-zero tiles, or keep them and raise sum(count^2)."""
        if self.k < 2:
            return
        m = min(self.k - 1, max(self.candidates, 1))
        for _ in range(self.max_iter):
            moves = 0
            for a in self.rng.permutation(self.n):
                c = int(self.assign[a])
                occ_a, cnt = self.occ[a], self.counts
                union, single = cnt > 0, cnt == 1
                tiles = union.sum(axis=1)
                after_a = union[c] & ~(occ_a & single[c])
                fresh = (occ_a & ~union).sum(axis=1)
                overlap = cnt @ self.occ_i[a]
                others = np.array([d for d in range(self.k) if d != c])
                order = np.lexsort((others, -overlap[others], fresh[others]))[:m]
                best: tuple[int, int] = (0, 0)  # (dt, -dq): must beat (0, 0)
                best_b = -1
                for d in np.sort(others[order]):
                    members = np.flatnonzero(self.assign == d)
                    occ_b = self.occ[members]
                    in_c = (after_a | occ_b).sum(axis=1)
                    in_d = ((union[d] & ~(occ_b & single[d])) | occ_a).sum(axis=1)
                    dt = in_c - tiles[c] + in_d - tiles[d]
                    ib = self.occ_i[members]
                    dq = 2 * (ib @ cnt[c] - overlap[c] + overlap[d] - ib @ cnt[d])
                    dq += 2 * (occ_b != occ_a).sum(axis=1)
                    for j, b in enumerate(members):
                        key = (int(dt[j]), -int(dq[j]))
                        if key < best:
                            best, best_b = key, int(b)
                if best_b >= 0:
                    d = int(self.assign[best_b])
                    self.counts[c] += self.occ_i[best_b] - self.occ_i[a]
                    self.counts[d] += self.occ_i[a] - self.occ_i[best_b]
                    self.assign[a], self.assign[best_b] = d, c
                    moves += 1
            if moves == 0:
                return

    def run(self, restarts: int) -> list[IntArray]:
        start = np.repeat(np.arange(self.k), self.caps)
        self.set_assignment(start)
        self.local_search()
        best, best_assign = self.objective(), self.assign.copy()
        for _ in range(restarts):
            self.lloyd()
            self.local_search()
            obj = self.objective()
            if obj < best:
                best, best_assign = obj, self.assign.copy()
        return [np.flatnonzero(best_assign == c) for c in range(self.k)]


def copermute_rows_blocks(
    blocks: Sequence[ArrayLike],
    tilings: Sequence[Tiling],
    *,
    max_iter: int = 20,
    restarts: int = 1,
    candidates: int = 16,
    seed: int = 0,
    small_budget: int = 1 << 16,
) -> IntArray:
    """Row permutation shared by all blocks that minimizes their non-zero tiles.

    Same arguments and result as :func:`fheprune._core.copermute_rows_blocks`:
    ``tilings[i] = (strip_rows, group_cols, segment_cols)``; returns ``perm`` with row ``i`` of
    every block becoming old row ``perm[i]`` (the identity unless strictly fewer non-zero tiles).
    """
    arrays = _check(blocks, tilings)
    rows = arrays[0].shape[0]
    identity = np.arange(rows, dtype=np.int64)
    occs = [group_occupancy(a, g, s) for a, (_, g, s) in zip(arrays, tilings, strict=True)]
    strips = [t[0] for t in tilings]

    def exact(perm: IntArray | None) -> int:
        return sum(_nonzero(o, s, perm) for o, s in zip(occs, strips, strict=True))

    before = exact(None)
    if rows == 0 or before == 0:
        return identity
    levels = sorted(set(strips), reverse=True)
    for hi, lo in itertools.pairwise(levels):
        if hi % lo:
            raise InputError(
                f"strip heights {hi} and {lo} do not nest: each must divide the next larger one"
            )
    level_occ = [
        np.concatenate([o for o, s in zip(occs, strips, strict=True) if s <= strip], axis=1)
        for strip in levels
    ]
    rng = np.random.default_rng(seed)
    out: list[int] = []

    def solve(points: IntArray, level: int) -> None:
        if level == len(levels):
            out.extend(sorted(points.tolist()))
            return
        strip, n = levels[level], len(points)
        k = math.ceil(n / strip)
        if k <= 1:
            solve(points, level + 1)
            return
        caps = [strip] * (k - 1) + [n - (k - 1) * strip]
        extra = min(MAX_SMALL_RESTARTS, small_budget // (n * k)) if small_budget > 0 else 0
        clusterer = _Clusterer(
            level_occ[level][points], caps, max_iter=max_iter, candidates=candidates, rng=rng
        )
        clusters = [np.sort(points[c]) for c in clusterer.run(max(restarts, extra))]
        full = sorted(range(k - 1), key=lambda c: int(clusters[c][0]))
        for c in [*full, k - 1]:
            solve(clusters[c], level + 1)

    solve(identity, 0)
    perm = np.asarray(out, dtype=np.int64)
    return perm if exact(perm) < before else identity

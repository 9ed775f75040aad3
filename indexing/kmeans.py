"""Inner-product k-means and nearest-centroid assignment for the IVF cells, in NumPy.

Why not faiss' own k-means: on the 2-core Xeon it ran at ~30 GFLOP/s per core where a
plain float32 matrix product through NumPy's OpenBLAS runs at 75-115, and training plus
the coarse assignment of every vector against all 4,096 cells were most of a 1M build
(333.7 of 392.1 CPU s; docs/benchmarks.md, "Reindex at 1M"). The work here is the same
arithmetic (scores of blocks of vectors against the centroids, argmax), done as large
matrix products.

``TwoLevel`` trains ``cells`` centroids as k-means of ``outer`` groups, then k-means
inside each group (cells in proportion to its rows), and its ``assign`` uses the same
hierarchy: each vector is compared with the group centroids, then with the cells of its
``probe`` best groups only. That costs ~(outer + probe * inner) products per vector
instead of ``cells``.
"""

from __future__ import annotations

import numpy as np

BLOCK = 8192  # rows per matrix product: [BLOCK, cells] float32 scores stay ~128 MB at 4,096
ASSIGN_BLOCK = 65_536  # rows per two-level assignment: each group's product is ~probe/outer of it


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """int64 index of the highest inner product centroid of each row (exact, float32)."""
    out = np.empty(len(x), dtype=np.int64)
    ct = np.ascontiguousarray(centroids.T, dtype=np.float32)
    for s in range(0, len(x), BLOCK):
        out[s : s + BLOCK] = np.argmax(np.asarray(x[s : s + BLOCK], np.float32) @ ct, axis=1)
    return out


def _sums(x: np.ndarray, assign: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-centroid sums of the rows assigned to it (a sparse one-hot product: ~10x
    faster than np.add.reduceat over the sorted rows), and the counts."""
    from scipy import sparse

    onehot = sparse.csr_matrix(
        (np.ones(len(assign), dtype=np.float32), (assign, np.arange(len(assign)))),
        shape=(k, len(assign)),
    )
    return np.asarray(onehot @ x, dtype=np.float64), np.bincount(assign, minlength=k)


def kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """float32 [k, dim] centroids of ``x`` (rows of unit length; inner product). Starts
    from k distinct random rows; an emptied cell takes half the rows of the largest one."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    if len(x) <= k:
        return x.copy()
    c = x[np.sort(rng.choice(len(x), k, replace=False))].copy()
    for _ in range(niter):
        assign = nearest(x, c)
        sums, counts = _sums(x, assign, k)
        for e in np.flatnonzero(counts == 0):  # rare: refill from the largest cell
            big = int(np.argmax(counts))
            members = np.flatnonzero(assign == big)
            move = members[rng.permutation(len(members))[: len(members) // 2]]
            assign[move] = e
            sums, counts = _sums(x, assign, k)
        c = (sums / counts[:, None]).astype(np.float32)
    return c


class TwoLevel:
    """Cells trained as k-means of ``outer`` groups, then k-means inside each group with
    cells in proportion to its share of the sample (``cells`` in all)."""

    def __init__(self, x: np.ndarray, cells: int, outer: int, niter: int, seed: int) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32)
        outer = max(1, min(outer, cells))
        self.groups = kmeans(x, outer, niter, seed)
        g = nearest(x, self.groups)
        sizes = np.bincount(g, minlength=outer)
        # cells per group in proportion to its share of the sample, at least one per
        # non-empty group and never more than it has rows (so exactly ``cells`` in all)
        share = np.minimum(sizes, np.maximum(1, cells * sizes // max(len(x), 1)))
        while share.sum() < cells:
            room = np.flatnonzero(share < sizes)
            if len(room) == 0:
                raise ValueError(f"{len(x)} training rows cannot make {cells} cells")
            share[room[np.argmax(sizes[room] / np.maximum(share[room], 1))]] += 1
        while share.sum() > cells:
            share[np.argmax(np.where(share > 1, share, 0))] -= 1
        parts, owner = [], []
        for j in range(outer):
            if share[j] == 0:
                continue
            members = x[g == j]
            parts.append(kmeans(members, int(share[j]), niter, seed + 1 + j))
            owner.append(np.full(len(parts[-1]), j, dtype=np.int64))
        self.centroids = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
        self.owner = np.concatenate(owner)  # group of each cell
        self._cells_of = [np.flatnonzero(self.owner == j) for j in range(outer)]
        self._ct = [np.ascontiguousarray(self.centroids[c].T) for c in self._cells_of]

    def assign(self, x: np.ndarray, probe: int) -> np.ndarray:
        """Cell of each row: the best cell among the cells of its ``probe`` best groups."""
        probe = min(probe, len(self.groups))
        out = np.empty(len(x), dtype=np.int64)
        for s in range(0, len(x), ASSIGN_BLOCK):
            xb = np.asarray(x[s : s + ASSIGN_BLOCK], dtype=np.float32)
            gs = xb @ self.groups.T
            top = np.argpartition(-gs, probe - 1, axis=1)[:, :probe]
            # rows of each group, by one sort of the (row, group) pairs
            order = np.argsort(top.ravel(), kind="stable")
            bounds = np.searchsorted(top.ravel()[order], np.arange(len(self.groups) + 1))
            best = np.full(len(xb), -np.inf, dtype=np.float32)
            cell = np.zeros(len(xb), dtype=np.int64)
            for j, ct in enumerate(self._ct):
                rows = order[bounds[j] : bounds[j + 1]] // probe
                if len(rows) == 0 or ct.shape[1] == 0:
                    continue
                sc = xb[rows] @ ct
                arg = np.argmax(sc, axis=1)
                val = sc[np.arange(len(rows)), arg]
                better = val > best[rows]
                best[rows[better]] = val[better]
                cell[rows[better]] = self._cells_of[j][arg[better]]
            out[s : s + ASSIGN_BLOCK] = cell
        return out

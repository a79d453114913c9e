"""ROAD's imputation systems against a reference built pixel by pixel and solved by scipy's spsolve."""

import numpy as np
from scipy.sparse import lil_matrix
from scipy.sparse.linalg import spsolve

from camkit.faithfulness.imputation import solve_imputations

SIDE, DIAGONAL = 1 / 6, 1 / 12


def reference(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """(C, n) values of the removed pixels, row-major: each one's equation written out by loops,
    sum_j w_ij (v_j - v_i) = 0 over its in-image neighbours j, kept neighbours moved right."""
    c, h, w = image.shape
    where = {p: k for k, p in enumerate(zip(*np.nonzero(removed)))}
    a, b = lil_matrix((len(where), len(where))), np.zeros((len(where), c))
    for (i, j), k in where.items():
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ii, jj = i + di, j + dj
                if (di, dj) == (0, 0) or not (0 <= ii < h and 0 <= jj < w):
                    continue
                wt = DIAGONAL if di and dj else SIDE
                a[k, k] -= wt
                if (ii, jj) in where:
                    a[k, where[ii, jj]] += wt
                else:
                    b[k] -= wt * image[:, ii, jj]
    return np.asarray(spsolve(a.tocsc(), b)).reshape(len(where), c).T


def masks() -> list[np.ndarray]:
    """A random mask, a block touching two borders, and two holes that do not touch each other."""
    rng = np.random.default_rng(0)
    border = np.zeros((9, 11), bool)
    border[:4, 6:] = True
    holes = np.zeros((9, 11), bool)
    holes[1:3, 1:3] = holes[5:8, 6:9] = True
    return [rng.random((9, 11)) < 0.45, border, holes, np.zeros((9, 11), bool)]


def test_solved_pixels_equal_spsolve_on_the_system_written_out():
    rng = np.random.default_rng(1)
    removed = np.stack(masks())
    images = rng.normal(size=(len(removed), 3, 9, 11))
    solved = solve_imputations(images, removed)
    assert [s.shape for s in solved] == [(3, int(m.sum())) for m in removed]
    for image, gone, values in zip(images, removed, solved):
        if gone.any():
            assert np.abs(values - reference(image, gone)).max() < 1e-6


def test_each_hole_is_filled_from_its_own_surroundings():
    """A constant image with a different constant around each hole: each hole takes its own value."""
    removed = masks()[2]
    image = np.full((1, 9, 11), 5.0)
    image[:, 4:, 4:] = -2.0
    values = solve_imputations(image[None], removed[None])[0][0]
    first = removed[1:3, 1:3].sum()
    assert np.allclose(values[:first], 5.0) and np.allclose(values[first:], -2.0)

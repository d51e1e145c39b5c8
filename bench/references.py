"""Reference recommenders for the offline evaluation, trained on a split's training
log: ItemKNN (cosine, implicit), EASE (closed form, numpy) and ALS (implicit),
each a ranker as personalization.evaluation scores them, with the grids their
hyper-parameters are tuned over on the validation split."""

import itertools
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping

import numpy as np
from scipy.sparse import csr_matrix

from personalization.events import VisitorInteraction
from personalization.neighbours import ease_weights

# EASE's regularisation, log-spaced from 10 to 5,000.
EASE_GRID = [{"lambda": round(float(x))} for x in np.geomspace(10, 5000, 7)]
KNN_GRID = [{"neighbours": n} for n in (10, 25, 50, 100, 200, 400)]
ALS_GRID = [
    {"factors": f, "regularization": r, "alpha": a}
    for f, r, a in itertools.product((32, 128), (0.01, 0.1), (1.0, 10.0, 40.0))
]
ALS_ITERATIONS = 15
# Past this many items and users both, EASE keeps the most interacted items only
# (its item-item matrix is dense).
EASE_MAX_ITEMS = 5000


class Matrix:
    """Visitors x items of a training log: summed positive weights."""

    def __init__(self, train: list[VisitorInteraction], weights: Mapping[str, float]):
        self.users = sorted({e.visitor_id for e in train})
        self.items = sorted({e.interaction.item.id for e in train})
        self.user_index = {u: i for i, u in enumerate(self.users)}
        self.item_index = {it: i for i, it in enumerate(self.items)}
        cells: dict[tuple[int, int], float] = defaultdict(float)
        for entry in train:
            weight = weights.get(entry.interaction.type, 0.0)
            if weight > 0:
                user = self.user_index[entry.visitor_id]
                cells[user, self.item_index[entry.interaction.item.id]] += weight
        rows = [row for row, _ in cells]
        cols = [col for _, col in cells]
        self.values = csr_matrix(
            (list(cells.values()), (rows, cols)),
            shape=(len(self.users), len(self.items)),
        )
        self.binary = (self.values > 0).astype(np.float64).tocsr()

    def ranker(self, scores: Callable[[int], np.ndarray]):
        """Rank by `scores` (a user's row -> a score per item), best first, ties by
        item id, without the excluded items."""
        items = np.asarray(self.items)

        def rank(visitor: str, excluded: set[int], k: int) -> list[int]:
            user = self.user_index.get(visitor)
            if user is None:
                return []
            score = np.array(scores(user), dtype=np.float64).ravel()
            for item in excluded:
                column = self.item_index.get(item)
                if column is not None:
                    score[column] = -np.inf
            depth = min(k, len(score))
            if depth <= 0:
                return []
            # Everything tied with the k-th best competes, so ties go by item id.
            threshold = np.partition(-score, depth - 1)[depth - 1]
            tied = np.flatnonzero(-score <= threshold)
            top = tied[np.lexsort((items[tied], -score[tied]))][:depth]
            return [int(items[i]) for i in top if np.isfinite(score[i])]

        return rank


def item_knn(matrix: Matrix, neighbours: int):
    """Item-item cosine on who took what, the `neighbours` most similar kept."""
    from implicit.nearest_neighbours import CosineRecommender

    model = CosineRecommender(K=neighbours, num_threads=1)
    with warnings.catch_warnings():
        # implicit converts its own intermediate matrix and warns about it.
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        model.fit(matrix.binary, show_progress=False)
    similarity = model.similarity.tocsr()
    return matrix.ranker(lambda user: (matrix.binary[user] @ similarity).toarray())


def ease(matrix: Matrix, regularization: float):
    """EASE (Steck 2019): B = I - P / diag(P), P = (XᵀX + λI)⁻¹, zero diagonal.

    With fewer visitors than items it is solved in the visitors' space (Woodbury:
    P = (I - Xᵀ(XXᵀ + λI)⁻¹X) / λ), which is exact and needs no dense item-item
    matrix."""
    x = matrix.binary
    users, items = x.shape
    if users < items:
        gram = (x @ x.T).toarray()
        inverse = np.linalg.inv(gram + regularization * np.eye(users))
        transposed = x.T.tocsr()
        # d_j = (Xᵀ M X)_jj, by blocks of items.
        diagonal = np.empty(items)
        for start in range(0, items, 4096):
            block = transposed[start : start + 4096]
            diagonal[start : start + 4096] = np.asarray(
                block.multiply(block @ inverse).sum(axis=1)
            ).ravel()
        denominator = 1.0 - diagonal

        def scores(user: int) -> np.ndarray:
            row = x[user].toarray().ravel()
            projected = np.asarray(x.T @ (gram[user] @ inverse)).ravel()
            return row - (row - projected) / denominator

        return matrix.ranker(scores)
    kept = np.argsort(-np.asarray(x.sum(axis=0)).ravel(), kind="stable")
    kept = kept[:EASE_MAX_ITEMS]
    sub = x[:, kept]
    weights = ease_weights((sub.T @ sub).toarray(), regularization)

    def scores_kept(user: int) -> np.ndarray:
        score = np.zeros(items)
        score[kept] = np.asarray(sub[user] @ weights).ravel()
        return score

    return matrix.ranker(scores_kept)


def als(matrix: Matrix, factors: int, regularization: float, alpha: float):
    """Implicit-feedback ALS (Hu, Koren, Volinsky 2008): the summed weights as
    preferences, confidence 1 + alpha * weight."""
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(
        factors=factors,
        regularization=regularization,
        alpha=alpha,
        iterations=ALS_ITERATIONS,
        num_threads=1,
        random_state=0,
    )
    model.fit(matrix.values, show_progress=False)
    users, items = model.user_factors, model.item_factors
    return matrix.ranker(lambda user: items @ users[user])


REFERENCES = {
    "ItemKNN": (KNN_GRID, lambda m, p: item_knn(m, p["neighbours"])),
    "EASE": (EASE_GRID, lambda m, p: ease(m, p["lambda"])),
    "ALS (implicit)": (
        ALS_GRID,
        lambda m, p: als(m, p["factors"], p["regularization"], p["alpha"]),
    ),
}

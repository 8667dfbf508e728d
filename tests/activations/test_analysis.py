"""Each out-of-core analysis against NumPy / scikit-learn on small data, on a real LocalCluster.

The rows are dask arrays in uneven chunks (as a store's last chunk is), far from the origin
(so one-pass sums that forgot to centre would lose digits), and low-rank plus noise (so PCA
has a spectrum to find).
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

from analoglab.activations import (
    ActivationError,
    HookView,
    diff_of_means,
    linear_cka,
    load_artifact,
    mean,
    mean_and_covariance,
    pca,
    save_artifact,
    split_by_prompt,
    top_activating,
    train_probe,
)


@pytest.fixture(autouse=True)
def on_the_cluster(client: Any) -> Any:
    # Every computation of this module runs on the LocalCluster's two worker processes.
    return client


def low_rank(n: int = 3000, d: int = 24, seed: int = 0, offset: float = 500.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(5, d))
    z = rng.normal(size=(n, 5)) * np.array([10.0, 6.0, 4.0, 2.5, 1.5])
    return (z @ basis + 0.1 * rng.normal(size=(n, d)) + offset).astype(np.float32)


def chunked(x: np.ndarray, rows: int = 700) -> Any:
    return da.from_array(x, chunks=(rows, *x.shape[1:]))


def view_of(x: np.ndarray, codes: np.ndarray, names: tuple[str, ...]) -> HookView:
    n = len(x)
    prompts = np.arange(n) // 4
    coords = {
        "token_id": chunked(np.arange(n, dtype=np.int32) % 97),
        "prompt": chunked(prompts),
        "position": chunked((np.arange(n) % 4).astype(np.int32)),
        "label": chunked(codes.astype(np.int32)),
    }
    return HookView("blocks.0.hook_resid_post", chunked(x), coords, names, (x.shape[1],))


def test_mean_and_covariance_match_numpy_far_from_the_origin() -> None:
    x = low_rank(offset=1e4)
    ref = x.astype(np.float64)
    got = mean_and_covariance(chunked(x))
    assert got.n == len(x)
    np.testing.assert_allclose(got.mean, ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(got.covariance, np.cov(ref, rowvar=False), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(mean(x), ref.mean(0), rtol=1e-12)  # NumPy input works too
    pop = mean_and_covariance(chunked(x), ddof=0)
    np.testing.assert_allclose(pop.covariance, np.cov(ref, rowvar=False, ddof=0), atol=1e-9)
    with pytest.raises(ActivationError, match="more than 1 rows"):
        mean_and_covariance(x[:1])


@pytest.mark.parametrize("method", ["randomized", "covariance"])
def test_pca_matches_sklearn(method: str) -> None:
    x = low_rank()
    ref = PCA(n_components=5, svd_solver="full").fit(x.astype(np.float64))
    got = pca(chunked(x), 5, method=method)  # type: ignore[arg-type]
    np.testing.assert_allclose(got.explained_variance, ref.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(
        got.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-6
    )
    np.testing.assert_allclose(got.mean, ref.mean_, rtol=1e-10)
    # Same components up to sign; ours have their largest entry positive.
    agreement = np.abs(np.sum(got.components * ref.components_, axis=1))
    np.testing.assert_allclose(agreement, 1.0, atol=1e-6)
    rows = np.arange(5)
    assert (got.components[rows, np.abs(got.components).argmax(1)] > 0).all()
    projected = got.transform(chunked(x)).compute()
    np.testing.assert_allclose(
        np.abs(projected), np.abs(ref.transform(x.astype(np.float64))), atol=1e-5
    )
    with pytest.raises(ActivationError, match="k must be"):
        pca(chunked(x), 0)


def test_randomized_pca_keeps_the_small_components_of_an_ill_conditioned_spectrum() -> None:
    # sigma_1 / sigma_k = 1e3: power iterations without re-orthonormalisation lose the
    # smallest components below the largest's rounding error.
    rng = np.random.default_rng(0)
    n, d, k = 2000, 30, 6
    u, _ = np.linalg.qr(rng.normal(size=(n, d)))
    v, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s = np.concatenate([np.logspace(3, 0, k), np.full(d - k, 1e-2)])
    x = (u * s) @ v.T + 5.0
    ref_s, ref_v = np.linalg.svd(x - x.mean(0), full_matrices=False)[1:]
    got = pca(chunked(x), k)
    np.testing.assert_allclose(got.singular_values, ref_s[:k], rtol=1e-8)
    agreement = np.abs(np.sum(got.components * ref_v[:k], axis=1))
    np.testing.assert_allclose(agreement, 1.0, atol=1e-8)


def test_difference_of_means_by_label() -> None:
    x = low_rank(n=1200)
    rng = np.random.default_rng(1)
    codes = rng.integers(-1, 3, size=len(x))  # -1: unlabelled
    view = view_of(x, codes, ("a", "b", "c"))
    got = diff_of_means(view, positive="c", negative="a")
    ref = x[codes == 2].astype(np.float64).mean(0) - x[codes == 0].astype(np.float64).mean(0)
    np.testing.assert_allclose(got.vector, ref, rtol=1e-9, atol=1e-9)
    assert (got.n_positive, got.n_negative) == ((codes == 2).sum(), (codes == 0).sum())
    assert got.hook == view.hook
    rest = diff_of_means(view, positive="b")  # against every other labelled row
    ref_rest = x[codes == 1].mean(0, dtype=np.float64) - x[(codes >= 0) & (codes != 1)].mean(
        0, dtype=np.float64
    )
    np.testing.assert_allclose(rest.vector, ref_rest, rtol=1e-9, atol=1e-9)
    raw = diff_of_means(chunked(x), codes, positive=2, negative=0)  # plain rows and labels
    np.testing.assert_allclose(raw.vector, ref, rtol=1e-9, atol=1e-9)
    with pytest.raises(ActivationError, match="no label 'd'.*a, b, c"):
        diff_of_means(view, positive="d")
    with pytest.raises(ActivationError, match="no rows of class"):
        diff_of_means(chunked(x), np.zeros(len(x)), positive=1, negative=0)


def probe_data(n: int = 2000, d: int = 12, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + 2.0
    w = rng.normal(size=d)
    y = (x @ w - 2.0 * w.sum() + rng.normal(scale=2.0, size=n) > 0).astype(int)
    return x.astype(np.float32), y


@pytest.mark.parametrize("l2", [1.0, 0.05])
def test_probe_matches_sklearn_logistic_regression(l2: float) -> None:
    x, y = probe_data()
    ref = LogisticRegression(C=1.0 / l2, tol=1e-12, max_iter=10_000).fit(x.astype(np.float64), y)
    got = train_probe(chunked(x, 300), y, l2=l2)
    assert got.converged and got.n_iter < 30
    np.testing.assert_allclose(got.weights, ref.coef_[0], rtol=1e-5, atol=1e-6)
    assert got.bias == pytest.approx(ref.intercept_[0], rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(
        got.predict_proba(x), ref.predict_proba(x.astype(np.float64))[:, 1], atol=1e-6
    )
    assert got.train_accuracy == pytest.approx(ref.score(x.astype(np.float64), y))
    assert got.accuracy(x, y) == pytest.approx(got.train_accuracy)


def test_probe_on_labels_with_a_split_by_prompt() -> None:
    x, y = probe_data(n=1600)
    codes = np.where(y == 1, 1, 0)
    codes[::10] = -1  # unlabelled rows are left out
    view = view_of(x, codes, ("neg", "pos"))
    train, test = split_by_prompt(view, test_fraction=0.25, seed=0)
    train_prompts = set(np.asarray(train.coords["prompt"].compute()))
    test_prompts = set(np.asarray(test.coords["prompt"].compute()))
    assert train_prompts and test_prompts and not train_prompts & test_prompts
    assert train.n_rows + test.n_rows == len(x)
    probe = train_probe(train, positive="pos", negative="neg")
    keep = np.asarray(train.coords["label"].compute()) >= 0
    xt = np.asarray(train.data.compute())[keep].astype(np.float64)
    yt = np.asarray(train.coords["label"].compute())[keep]
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(xt, yt)
    np.testing.assert_allclose(probe.weights, ref.coef_[0], rtol=1e-5, atol=1e-6)
    assert probe.n == keep.sum()
    assert probe.accuracy(test) > 0.8  # held-out prompts
    with pytest.raises(ActivationError, match="both classes"):
        train_probe(chunked(x), np.ones(len(x)))


def test_probe_accuracy_on_raw_rows_maps_labels_as_training_did() -> None:
    x, y = probe_data(n=1200)
    twelve = np.where(y == 1, 2, 1)  # labels {1, 2}, 2 the positive class
    probe = train_probe(chunked(x, 300), twelve, positive=2)
    assert probe.accuracy(x, twelve) == pytest.approx(probe.train_accuracy)
    assert probe.train_accuracy > 0.8
    # With a negative class, rows of any other label are left out, in training and scoring.
    three = twelve.copy()
    three[::7] = 3
    masked = train_probe(chunked(x, 300), three, positive=2, negative=1)
    assert masked.n == int((three != 3).sum())
    assert masked.accuracy(x, three) == pytest.approx(masked.train_accuracy)
    words = np.where(y == 1, "pos", "neg")
    named = train_probe(chunked(x, 300), words, positive="pos")
    assert named.accuracy(x, words) == pytest.approx(named.train_accuracy)
    np.testing.assert_allclose(named.weights, probe.weights, rtol=1e-9, atol=1e-12)
    # Values that are not 0/1 without positive=: one clear error, not a traceback.
    for bad in (words, twelve):
        with pytest.raises(ActivationError, match="not 0/1; name the positive class"):
            train_probe(chunked(x, 300), bad)
        with pytest.raises(ActivationError, match="not 0/1"):
            train_probe(chunked(x, 300), y).accuracy(x, bad)


def cka_reference(x: np.ndarray, y: np.ndarray) -> float:
    xc = x - x.mean(0)
    yc = y - y.mean(0)
    return float(
        np.linalg.norm(xc.T @ yc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    )


def test_linear_cka() -> None:
    x = low_rank(n=2000).astype(np.float64)
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(24, 24)))
    other = x[:, :10] @ rng.normal(size=(10, 7)) + rng.normal(size=(2000, 7))  # another width
    assert linear_cka(chunked(x), chunked(other, 512)) == pytest.approx(
        cka_reference(x, other), rel=1e-9
    )
    assert linear_cka(chunked(x), chunked(x)) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(chunked(x), chunked(3.0 * x @ q + 7.0)) == pytest.approx(1.0, abs=1e-9)
    shuffled = x[rng.permutation(len(x))]
    assert linear_cka(chunked(x), chunked(shuffled)) < 0.05
    assert linear_cka(chunked(x), chunked(shuffled)) == pytest.approx(
        cka_reference(x, shuffled), rel=1e-6
    )
    with pytest.raises(ActivationError, match="same rows"):
        linear_cka(chunked(x), chunked(x[:100]))


def test_cka_refuses_views_of_different_tokens() -> None:
    x = low_rank(n=800)
    codes = np.zeros(len(x), dtype=int)
    a = view_of(x, codes, ("a",))
    b = view_of(x, codes, ("a",))
    assert linear_cka(a, b) == pytest.approx(1.0)
    moved = HookView(b.hook, b.data, {**b.coords, "token_id": b.coords["token_id"] + 1}, ("a",))
    with pytest.raises(ActivationError, match="different tokens"):
        linear_cka(a, moved)
    assert linear_cka(a, moved, check_rows=False) == pytest.approx(1.0)


def test_top_activating_finds_the_largest_projections() -> None:
    x = low_rank(n=1500)
    codes = np.random.default_rng(2).integers(0, 2, size=len(x))
    view = view_of(x, codes, ("a", "b"))
    direction = np.random.default_rng(3).normal(size=x.shape[1])
    scores = x.astype(np.float64) @ (direction / np.linalg.norm(direction))
    hits = top_activating(view, direction, k=7)
    assert [h.row for h in hits] == list(np.argsort(-scores)[:7])
    np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:7], rtol=1e-9)
    assert [h.prompt for h in hits] == [r // 4 for r in np.argsort(-scores)[:7]]
    assert [h.label for h in hits] == [("a", "b")[codes[h.row]] for h in hits]
    low = top_activating(view, direction, k=3, lowest=True)
    assert [h.row for h in low] == list(np.argsort(scores)[:3])
    cos = x.astype(np.float64) @ direction / np.linalg.norm(x, axis=1) / np.linalg.norm(direction)
    assert [h.row for h in top_activating(view, direction, k=5, cosine=True)] == list(
        np.argsort(-cos)[:5]
    )
    with pytest.raises(ActivationError, match="entries"):
        top_activating(view, np.ones(3))


def test_artifacts_round_trip_and_detect_tampering(tmp_path: Any) -> None:
    x = low_rank(n=600)
    result = pca(chunked(x), 3)
    saved = save_artifact(result, tmp_path / "out" / "pca-demo", info={"note": "test"})
    assert saved.npz.name == "pca-demo.npz" and saved.json.name == "pca-demo.json"
    arrays, record = load_artifact(tmp_path / "out" / "pca-demo")
    np.testing.assert_array_equal(arrays["components"], result.components)
    assert record["summary"]["kind"] == "pca" and record["summary"]["k"] == 3
    assert record["arrays"]["components"] == {"shape": [3, 24], "dtype": "float64"}
    assert record["info"] == {"note": "test"}
    saved.npz.write_bytes(saved.npz.read_bytes()[:-1] + b"x")
    with pytest.raises(ActivationError, match="checksum"):
        load_artifact(saved.json)
    with pytest.raises(ActivationError, match="cannot save"):
        save_artifact(object(), tmp_path / "bad")  # type: ignore[arg-type]

"""The benchmark's estimators on synthetic features with known answers: unbiased per-class
KID (against the old pooled estimator), the class-stratified paired bootstrap, the fast
Frechet distance, precision/recall/density/coverage, profiles and code fingerprints."""

from __future__ import annotations

import numpy as np
import pytest

from ops.eval.bootstrap import bootstrap, interval, resample_indices, significant
from ops.eval.classwise import (
    ALL,
    MEAN,
    ClassSample,
    fast_frechet,
    mixture_moments,
    point_metrics,
)
from ops.eval.distances import frechet_distance, kid
from ops.eval.kid import class_balanced_kid, kid_unbiased
from ops.eval.manifold import manifold_metrics


def _separated(rng, classes=4, n=64, d=8, centres=None):
    """Well-separated classes (means ~6 apart), ``n`` i.i.d. images per class."""
    centres = rng.normal(size=(classes, d)) * 6 if centres is None else centres
    return {f"c{i}": centres[i] + rng.normal(size=(n, d)) for i in range(len(centres))}


def test_kid_of_two_samples_of_one_distribution_is_zero_inside_its_interval():
    """Pooled over well-separated classes: the per-class unbiased KID is ~0 and its bootstrap
    interval holds 0; the old estimator (one unbiased MMD on the concatenated class-balanced
    sets, clean-fid's kernel_distance) is clearly negative, below that interval."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 6
    gen, ref = _separated(rng, centres=centres), _separated(rng, centres=centres)
    samples = [ClassSample(c, gen[c], ref[c]) for c in gen]
    point = point_metrics(samples)[ALL]["kid"]
    lo, hi = interval(point, bootstrap(samples, replicates=200, seed=0)[ALL]["kid"])
    assert lo <= 0.0 <= hi
    assert point == pytest.approx(class_balanced_kid(gen, ref))
    old = kid(np.concatenate(list(gen.values())), np.concatenate(list(ref.values())),
              num_subsets=100, max_subset_size=1000)  # fmt: skip
    assert old < lo < 0.0  # biased negative: outside the interval of the correct estimator


def test_kid_unbiased_is_positive_for_a_shift_and_symmetric_in_expectation():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    assert abs(kid_unbiased(a, b)) < 0.02
    assert kid_unbiased(a, b + 1.0) > 0.2


def test_bootstrap_draws_depend_on_class_and_n_only_and_replicates_are_reproducible():
    one = resample_indices(0, "c0", 64, 0, 5)
    assert np.array_equal(one, resample_indices(0, "c0", 64, 0, 5))
    assert not np.array_equal(one, resample_indices(0, "c1", 64, 0, 5))
    assert not np.array_equal(one, resample_indices(0, "c0", 64, 1, 5))  # ref side
    assert one.min() >= 0 and one.max() < 64
    rng = np.random.default_rng(3)
    gen, ref = _separated(rng, classes=2, n=20), _separated(rng, classes=2, n=20)
    samples = [ClassSample(c, gen[c], ref[c], np.arange(20) % 2 == 0) for c in gen]
    a, b = bootstrap(samples, 30, seed=4), bootstrap(samples, 30, seed=4)
    for row in ("c0", ALL, MEAN):
        np.testing.assert_array_equal(a[row]["fid"], b[row]["fid"])
        assert a[row]["class_fidelity"].min() >= 0 and a[row]["class_fidelity"].max() <= 1


def test_paired_bootstrap_makes_a_real_difference_significant_and_none_not():
    """Two models share starting noise per image (same features up to a model effect); the
    paired replicate-wise difference resolves a small shift that independent intervals
    overlap on, and calls a zero effect not significant."""
    rng = np.random.default_rng(5)
    ref = _separated(rng, classes=3, n=64, d=6)
    noise = {c: rng.normal(size=(64, 6)) for c in ref}
    centre = {c: v.mean(0) for c, v in ref.items()}
    base = [ClassSample(c, centre[c] + noise[c], ref[c]) for c in ref]
    worse = [ClassSample(c, centre[c] + noise[c] * 1.15 + 0.15, ref[c]) for c in ref]
    same = [ClassSample(c, centre[c] + noise[c], ref[c]) for c in ref]
    rb, rw, rs = (bootstrap(s, 200, seed=0)[ALL]["fid"] for s in (base, worse, same))
    pb, pw = point_metrics(base)[ALL]["fid"], point_metrics(worse)[ALL]["fid"]
    lo, hi = interval(pw - pb, rw - rb)
    assert significant(lo, hi) and lo > 0
    assert not significant(*interval(0.0, rs - rb))


def test_interval_centres_on_the_point_and_ignores_nan():
    reps = np.array([10.0, 11.0, 12.0, 13.0, np.nan])
    lo, hi = interval(5.0, reps)
    assert lo < 5.0 < hi and hi - lo < 3.1
    assert np.isnan(interval(float("nan"), reps)[0])


def test_fast_frechet_equals_clean_fid_and_pooled_fid_weights_classes_equally():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(80, 5)), rng.normal(size=(90, 5)) * 1.3 + 0.2
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    assert fast_frechet(x.mean(0), s1, y.mean(0), s2) == pytest.approx(
        frechet_distance(x.mean(0), s1, y.mean(0), s2), rel=1e-9
    )
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3)) + 5
    mu, cov = mixture_moments([(a.mean(0), np.cov(a, rowvar=False)),
                               (b.mean(0), np.cov(b, rowvar=False))])  # fmt: skip
    np.testing.assert_allclose(mu, np.concatenate([a, b]).mean(0))
    # a class with 10x the reference images still weighs 1/2
    big = rng.normal(size=(500, 3)) + 5
    mu2, _ = mixture_moments([(a.mean(0), np.cov(a, rowvar=False)),
                              (big.mean(0), np.cov(big, rowvar=False))])  # fmt: skip
    assert mu2 == pytest.approx((a.mean(0) + big.mean(0)) / 2)


def test_precision_recall_density_coverage_separate_fidelity_from_diversity():
    rng = np.random.default_rng(7)
    real = rng.normal(size=(300, 4))
    good = manifold_metrics(rng.normal(size=(300, 4)), real)
    collapsed = manifold_metrics(rng.normal(size=(300, 4)) * 0.05, real)  # one mode
    off = manifold_metrics(rng.normal(size=(300, 4)) + 6, real)
    assert good.precision > 0.8 and good.recall > 0.8 and good.coverage > 0.8
    assert 0.7 < good.density < 1.3
    assert collapsed.precision > 0.9 and collapsed.recall < 0.2 and collapsed.coverage < 0.2
    assert off.precision < 0.05 and off.coverage < 0.05


def test_point_metrics_rows_and_mean_over_classes():
    rng = np.random.default_rng(8)
    gen, ref = _separated(rng, classes=3, n=40), _separated(rng, classes=3, n=40)
    rows = point_metrics([ClassSample(c, gen[c], ref[c]) for c in gen])
    assert list(rows) == ["c0", "c1", "c2", ALL, MEAN]
    assert rows[MEAN]["fid"] == pytest.approx(np.mean([rows[c]["fid"] for c in gen]))
    assert rows[ALL]["kid"] == pytest.approx(rows[MEAN]["kid"])
    assert np.isnan(rows[ALL]["class_fidelity"])  # no classifier verdicts given


def test_profile_overlays_grid_keys_only():
    from ops.config import ConfigError, load_params
    from ops.eval.plan import plan
    from ops.eval.settings import benchmark_config, headline_seeds, images_per_seed

    params = load_params(preset="tiny")
    default = plan(params)
    assert ("llcm", 20) not in default and ("teacher_dpmpp", 8) in default
    cfg = benchmark_config(params)
    assert headline_seeds(cfg, "llcm", 1) == 3 and images_per_seed(cfg, 3) * 3 >= 64
    params["benchmark"]["profile"] = "full"
    full = plan(params)
    assert ("llcm", 20) in full and ("teacher_ddim50", 50) in full and len(full) > len(default)
    assert images_per_seed(benchmark_config(params), 3) == 64
    params["benchmark"]["profiles"]["full"]["bootstrap_seed"] = 3
    with pytest.raises(ConfigError, match="non-grid keys"):
        benchmark_config(params)
    params["benchmark"]["profile"] = "nope"
    with pytest.raises(ConfigError, match="unknown benchmark profile"):
        benchmark_config(params)


def test_code_fingerprint_changes_with_the_source_and_only_for_its_family(tmp_path, monkeypatch):
    from ops.eval import versions

    for rel in ("eval/plan.py", "eval/shards.py", "distill/sampling.py", "eval/kid.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    monkeypatch.setattr(versions, "OPS", tmp_path)
    monkeypatch.setattr(versions, "METRIC_CODE", ("eval/kid.py",))

    def current():
        versions.code_versions.cache_clear()
        return {
            "metrics": versions.source_hash(versions.METRIC_CODE, tmp_path),
            **{f: versions.source_hash(files, tmp_path) for f, files in versions.SAMPLER_CODE.items()},
        }  # fmt: skip

    before = current()
    (tmp_path / "distill/sampling.py").write_text("# changed student sampler\n")
    after = current()
    assert after["consistency"] != before["consistency"]
    assert after["diffusion"] == before["diffusion"] and after["metrics"] == before["metrics"]
    (tmp_path / "eval/kid.py").write_text("# changed estimator\n")
    assert current()["metrics"] != after["metrics"]
    assert set(versions.library_versions()) == set(versions.LIBRARIES)
    versions.code_versions.cache_clear()

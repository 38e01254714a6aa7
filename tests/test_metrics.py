"""FID / KID / feature statistics: checked against independent numpy/scipy formulas and clean-fid."""

from __future__ import annotations

import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_fixtures import make_shape_dataset
from scipy import linalg

import ops.eval.reference as reference_module
from ops.eval import distances, features
from ops.eval.classifier import DomainClassifier, feature_extractor
from ops.eval.classwise import sample_size_warnings
from ops.eval.distances import FeatureStats, frechet_distance, kid
from ops.eval.extractor import load_extractor
from ops.eval.features import extract_features
from ops.eval.reference import reference_path, reference_stats

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _independent_fid(mu1, s1, mu2, s2) -> float:
    """Frechet distance via the symmetric form Tr((S1^1/2 S2 S1^1/2)^1/2), written here."""
    root1 = linalg.sqrtm(s1).real
    cross = linalg.sqrtm(root1 @ s2 @ root1).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))


def test_frechet_matches_independent_scipy():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(_independent_fid(mu1, s1, mu2, s2), rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_diagonal_closed_form():
    """Diagonal covariances: FID = sum (mu1-mu2)^2 + sum (sqrt(v1) - sqrt(v2))^2."""
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 1.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected)


def test_sample_fid_approaches_population_value():
    """Stats of samples from two known Gaussians give (nearly) their population distance."""
    rng = np.random.default_rng(1)
    d, n = 4, 20_000
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    x = rng.multivariate_normal(mu1, s1, size=n)
    y = rng.multivariate_normal(mu2, s2, size=n)
    got = distances.fid_from_stats(FeatureStats.from_features(x), FeatureStats.from_features(y))
    assert got == pytest.approx(_independent_fid(mu1, s1, mu2, s2), rel=0.05)


def test_feature_stats_merge_is_exact():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(103, 7)) * 3 + 1
    shards = np.array_split(feats, 5)
    streamed = FeatureStats(7)
    for shard in shards:
        streamed.update(shard)
    merged = FeatureStats.merge_all(FeatureStats.from_features(s) for s in shards)
    assert merged.n == streamed.n == 103
    assert np.array_equal(merged.sum, streamed.sum)
    assert np.array_equal(merged.sum_outer, streamed.sum_outer)
    assert merged.sum.dtype == np.float64
    np.testing.assert_allclose(merged.mean, feats.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged.covariance, np.cov(feats, rowvar=False), rtol=1e-10)
    restored = FeatureStats.from_arrays(merged.to_arrays())
    assert np.array_equal(restored.sum_outer, merged.sum_outer) and restored.n == merged.n


def test_kid_zero_for_same_distribution_positive_for_shifted():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    shifted = rng.normal(size=(400, 8)) + 1.0
    same = kid(a, b, num_subsets=20, max_subset_size=200)
    apart = kid(a, shifted, num_subsets=20, max_subset_size=200)
    assert abs(same) < 0.02
    assert apart > 0.2
    assert apart > 20 * abs(same)


def test_kid_is_seeded_and_leaves_global_rng_alone():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(60, 4)) + 0.3
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    assert kid(a, b, seed=7) == kid(a, b, seed=7)
    assert np.array_equal(np.random.get_state()[1], before)


def test_sample_size_warnings_flag_rank_deficient_covariances():
    warnings_ = sample_size_warnings(6, 40, 8)
    assert warnings_ == ["generated n=6 <= feature dim 8: covariance rank-deficient, FID biased"]
    assert sample_size_warnings(64, 64, 16) == []


def test_to_uint8_accepts_float_tensors_and_nchw():
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = features.to_uint8_hwc(x)
    assert out.shape == (2, 2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [0, 128, 255]


def _untrained_extractor(feature_dim: int = 8, resolution: int = 32):
    torch.manual_seed(0)
    return feature_extractor(DomainClassifier(3, feature_dim, resolution))


@pytest.mark.filterwarnings("ignore:.*disp.*:DeprecationWarning")  # inside clean-fid
def test_compute_fid_offline_agrees_with_streaming(layout, no_network):
    from cleanfid import fid as cfid

    make_shape_dataset(layout, n_train=0, n_test=16, n_holdout=0, size=32)
    extractor = _untrained_extractor()
    dir1, dir2 = layout.images / "test" / "disc", layout.images / "test" / "square"
    reference = cfid.compute_fid(
        str(dir1),
        str(dir2),
        mode="clean",
        custom_feat_extractor=extractor.fn,
        custom_fn_resize=extractor.resize,
        device=torch.device("cpu"),
        num_workers=0,
        batch_size=8,
        verbose=False,
    )

    def streamed(folder: Path) -> FeatureStats:
        stats = FeatureStats(extractor.dim)
        paths = sorted(folder.glob("*.jpg"))
        for start in range(0, len(paths), 5):  # other batching than clean-fid's
            stats.update(
                extract_features(features.load_images(paths[start : start + 5]), extractor)
            )
        return stats

    ours = distances.fid_from_stats(streamed(dir1), streamed(dir2))
    assert reference > 0
    assert ours == pytest.approx(reference, rel=1e-4)


def test_reference_stats_are_cached_and_refreshed(layout, no_network, monkeypatch):
    manifest = make_shape_dataset(layout, n_train=2, n_test=10, n_holdout=0, size=32)
    extractor = _untrained_extractor()
    refs = reference_stats(layout, extractor, ["disc", "cross"])
    path = reference_path(layout, "domain", "disc")
    assert path.is_file() and path.parent == layout.reports / "fid_refs" / "domain"
    with np.load(path) as saved:
        assert int(saved["n"]) == 10 and saved["mu"].shape == (8,)
        assert saved["sigma"].shape == (8, 8) and saved["feats"].shape == (10, 8)
        assert str(saved["fingerprint"]) == refs["disc"].fingerprint

    def no_extraction(*args, **kwargs):
        raise AssertionError("cached stats were recomputed")

    monkeypatch.setattr(reference_module, "extract_features", no_extraction)
    cached = reference_stats(layout, extractor, ["disc"])
    assert np.array_equal(cached["disc"].stats.sum_outer, refs["disc"].stats.sum_outer)
    monkeypatch.undo()

    fewer = manifest.drop(
        manifest[(manifest.class_name == "disc") & (manifest.split == "test")].index[:3]
    )
    fewer.to_parquet(layout.manifest, index=False)
    refreshed = reference_stats(layout, extractor, ["disc"])
    assert refreshed["disc"].stats.n == 7
    assert refreshed["disc"].fingerprint != refs["disc"].fingerprint
    pooled = FeatureStats.merge_all(r.stats for r in refs.values())
    assert pooled.n == 20


def test_missing_inception_weights_is_a_clear_error(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(features, "cleanfid_inception_path", lambda: tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError, match="benchmark.inception_weights"):
        features.inception_extractor(None)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_extractor("inception", layout=None, params={"benchmark": {}})


def test_inception_extractor_loads_a_local_torchscript_file(tmp_path, monkeypatch, no_network):
    """A stand-in TorchScript file with Inception's interface (``.layers``, 2048-d output)."""

    class FakeInception(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.Sequential(
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2048)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    path = tmp_path / features.INCEPTION_FILENAME
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, clean-fid uses it
        torch.jit.script(FakeInception()).save(str(path))
    monkeypatch.setattr(features, "cleanfid_inception_path", lambda: tmp_path / "absent.pt")
    extractor = load_extractor(
        "inception", layout=None, params={"benchmark": {"inception_weights": str(path)}}
    )
    assert extractor.input_size == 299 and extractor.dim == 2048
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    feats = extract_features(images, extractor)
    assert feats.shape == (2, 2048) and feats.dtype == np.float32
    with pytest.raises(ValueError, match="299x299"):
        extractor.fn(torch.zeros(1, 3, 32, 32))

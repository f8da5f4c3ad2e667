"""Metrics: Fréchet distance against scipy.linalg.sqrtm, the shipped digits classifier, FID error paths."""

import importlib.util
import math
import urllib.error

import numpy as np
import pytest
import scipy.linalg
import torch

from scoresde import metrics
from scoresde.classifier import (
    DigitsClassifier, DigitsTrainConfig, accuracy, load_digits_classifier, read_metadata,
    save_digits_classifier, shift_images, train_digits_classifier,
)
from scoresde.data import digits, to_model_input
from scoresde.metrics import class_entropy, feature_stats, frechet_distance

HAS_FIDELITY = importlib.util.find_spec("torch_fidelity") is not None


def frechet_sqrtm(mu1, cov1, mu2, cov2):
    """The textbook formula with scipy's general matrix square root of cov1 @ cov2."""
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    diff = mu1 - mu2
    return diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean)


def random_features(n, f, seed):
    """Correlated features (n, f) and a shifted, rescaled second set."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(f, f)) / math.sqrt(f)
    a = rng.normal(size=(n, f)) @ mix
    b = 1.1 * rng.normal(size=(n, f)) @ mix + 0.2
    return a, b


# --- Fréchet distance ----------------------------------------------------------------------------

# full rank (N > F): the two computations agree to roundoff; measured rel. error <= 6e-11
@pytest.mark.parametrize("n,f", [(500, 4), (1000, 16), (2000, 64), (300, 96)])
def test_frechet_matches_sqrtm_full_rank(n, f):
    a, b = random_features(n, f, seed=f)
    stats = (*feature_stats(a), *feature_stats(b))
    assert frechet_distance(*stats) == pytest.approx(frechet_sqrtm(*stats), rel=1e-9)


def frechet_low_rank(a, b):
    """Reference for N - 1 < F without any zero eigenvalue: with the centered features of a written as
    X (N - 1, F) in an orthonormal basis of the complement of (1, ..., 1), cov_a = X^T X / (N - 1), and
    the nonzero eigenvalues of cov_a cov_b are those of the full-rank X cov_b X^T / (N - 1)."""
    n = a.shape[0]
    q, _ = np.linalg.qr(np.concatenate([np.ones((n, 1)), np.eye(n)[:, : n - 1]], axis=1))
    x = q[:, 1:].T @ (a - a.mean(0)) / math.sqrt(n - 1)
    mu_b, cov_b = feature_stats(b)
    diff = a.mean(0) - mu_b
    tr_covmean = np.sqrt(np.linalg.eigvalsh(x @ cov_b @ x.T)).sum()
    return diff @ diff + (x * x).sum() + np.trace(cov_b) - 2.0 * tr_covmean


# rank-deficient covariances (N <= F): scipy's sqrtm is itself off by up to ~3e-8 relative here (the
# zero eigenvalues of cov1 cov2 carry roundoff, and sqrt is not Lipschitz at 0); `frechet_distance`
# sets roundoff-level eigenvalues to 0 and agrees with the low-rank reference (and with a 40-digit
# mpmath evaluation) to ~1e-14
@pytest.mark.parametrize("n,f", [(50, 64), (20, 64), (5, 16)])
def test_frechet_rank_deficient(n, f):
    a, b = random_features(n, f, seed=n)
    stats = (*feature_stats(a), *feature_stats(b))
    d2 = frechet_distance(*stats)
    assert np.isfinite(d2) and isinstance(d2, float)
    assert d2 == pytest.approx(frechet_low_rank(a, b), rel=1e-11)
    assert d2 == pytest.approx(frechet_sqrtm(*stats), rel=1e-6)


def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.1, 2.0, size=6), rng.uniform(0.1, 2.0, size=6)
    v1[0] = 0.0  # a zero variance is allowed
    # commuting (diagonal) covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)
    # rotating both Gaussians together changes nothing
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-10)
    # identical statistics: 0 up to roundoff; symmetric in its two arguments
    a, b = random_features(400, 32, seed=1)
    sa, sb = feature_stats(a), feature_stats(b)
    assert frechet_distance(*sa, *sa) <= 1e-10 * np.trace(sa[1])
    assert frechet_distance(*sa, *sb) == pytest.approx(frechet_distance(*sb, *sa), rel=1e-10)


def test_feature_stats_float64_and_tensors():
    a, _ = random_features(100, 5, seed=2)
    mu, cov = feature_stats(torch.from_numpy(a).float())
    assert mu.dtype == cov.dtype == np.float64 and cov.shape == (5, 5)
    np.testing.assert_allclose(cov, np.cov(a.astype(np.float32).astype(np.float64), rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(mu, a.astype(np.float32).mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(N, F\) with N >= 2"):
        feature_stats(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="non-finite"):
        feature_stats(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match=r"cov2 must have shape \(5, 5\)"):
        frechet_distance(mu, cov, mu, np.eye(4))


def test_class_entropy():
    assert class_entropy(np.full(10, 0.1)) == pytest.approx(math.log(10), rel=1e-12)
    assert class_entropy(np.eye(10)[3]) == 0.0 and math.copysign(1.0, class_entropy(np.eye(10)[3])) == 1.0
    assert class_entropy([0.5, 0.5, 0.0]) == pytest.approx(math.log(2), rel=1e-12)
    with pytest.raises(ValueError, match="summing to 1"):
        class_entropy([0.5, 0.2])


# --- digits classifier and digits metrics ---------------------------------------------------------

@pytest.fixture(scope="module")
def classifier():
    return load_digits_classifier()


@pytest.fixture(scope="module")
def test_split():
    data = digits("test")
    return to_model_input(data.images, data.levels), data.labels


def test_shipped_classifier_accuracy(classifier, test_split):
    x, labels = test_split
    acc = accuracy(classifier, x, labels)
    assert acc >= 0.97  # the bar on the 360 test images
    meta = read_metadata()
    assert meta["format"] == "scoresde.digits_classifier/1"
    assert meta["extra"]["test_accuracy"] == pytest.approx(acc, abs=1e-9)
    assert not classifier.training and isinstance(classifier, DigitsClassifier)
    assert classifier.features(x[:3]).shape == (3, classifier.config.hidden)


def test_digits_quality_of_real_images(classifier, test_split):
    x, labels = test_split
    same = metrics.digits_quality(x, classifier=classifier)
    assert same.fd <= 1e-8 and same.n == 360 and same.reference == "test"
    truth = np.bincount(labels.numpy(), minlength=10) / 360
    assert np.abs(same.histogram - truth).max() <= 0.01  # >= 98.9 % of predictions right
    assert same.entropy == pytest.approx(class_entropy(truth), abs=0.01)
    train = digits("train")
    floor = metrics.digits_floor(classifier=classifier)
    x_train = to_model_input(train.images, train.levels)
    assert metrics.digits_quality(x_train, classifier=classifier).fd == pytest.approx(floor, rel=1e-9)
    # off-grid values within half a level round back onto the 17 levels
    noisy = x + 0.4 * (2 / 16) * (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) - 1)
    assert metrics.digits_quality(noisy, classifier=classifier).fd <= 1e-8
    assert metrics.digits_quality(noisy, classifier=classifier, quantize=False).fd > 1e-6
    # a model trained on dequantized data samples on the bin scale: its bins map back exactly
    deq = to_model_input(digits("test").images, 17, dequantize=True, generator=torch.Generator().manual_seed(1))
    assert metrics.digits_quality(deq, classifier=classifier, dequantized=True).fd <= 1e-8
    assert metrics.digits_quality(deq, classifier=classifier).fd > 1e-6  # rounding puts some in the wrong level
    with pytest.raises(ValueError, match="needs quantize=True"):
        metrics.digits_quality(deq, classifier=classifier, quantize=False, dequantized=True)


def test_digits_quality_sees_mode_collapse_and_noise(classifier, test_split):
    x, labels = test_split
    floor = metrics.digits_floor(classifier=classifier)
    ones = metrics.digits_quality(x[labels == 1], classifier=classifier)
    assert ones.entropy < 0.2 and ones.histogram[1] > 0.9 and ones.fd > 5 * floor
    noise = torch.rand((200, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert metrics.digits_quality(noise, classifier=classifier).fd > 10 * floor
    with pytest.raises(ValueError, match=r"shape \(N, 1, 8, 8\)"):
        metrics.digits_quality(x[:, :, :4], classifier=classifier)
    with pytest.raises(ValueError, match="choose one of"):
        metrics.digits_quality(x, reference="valid", classifier=classifier)


def test_classifier_training_is_reproducible_and_leaves_global_rng(tmp_path):
    state = torch.random.get_rng_state()
    cfg = DigitsTrainConfig(seed=5, epochs=1)
    a = train_digits_classifier(5, train=cfg)
    b = train_digits_classifier(5, train=cfg)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    save_digits_classifier(a, tmp_path / "c.safetensors", train=cfg, extra={"note": "one epoch"})
    c = load_digits_classifier(tmp_path / "c.safetensors")
    meta = read_metadata(tmp_path / "c.safetensors")
    assert DigitsTrainConfig(**meta["train"]) == cfg and meta["extra"] == {"note": "one epoch"}
    x = torch.zeros(2, 1, 8, 8)
    torch.testing.assert_close(c(x), a(x))
    with pytest.raises(ValueError, match="differs from train.seed"):
        train_digits_classifier(0, train=cfg)


def test_shift_images():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).expand(50, 1, 4, 4)
    y = shift_images(x, 1, generator=torch.Generator().manual_seed(0), fill=-1.0)
    for img in y:  # each output is the input moved by at most one pixel, with -1 filled in
        found = any(
            torch.equal(img[0, max(dy, 0):4 + min(dy, 0), max(dx, 0):4 + min(dx, 0)],
                        x[0, 0, max(-dy, 0):4 + min(-dy, 0), max(-dx, 0):4 + min(-dx, 0)])
            for dy in (-1, 0, 1) for dx in (-1, 0, 1)
        )
        assert found
    assert len({tuple(img.flatten().tolist()) for img in y}) == 9  # all nine shifts occur


@pytest.mark.slow
def test_retraining_reaches_the_shipped_accuracy(test_split):
    """examples/train_digits_classifier.py: ~25-60 s on one CPU thread."""
    x, labels = test_split
    assert accuracy(train_digits_classifier(0), x, labels) >= 0.97


# --- FID on Inception features (optional extra) ---------------------------------------------------

def test_inception_weights_error_without_network(tmp_path, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match="cannot fetch the FID Inception weights") as err:
        metrics.inception_weights()
    message = str(err.value)
    assert "\n" not in message and "weights_path=" in message and metrics.INCEPTION_URL in message
    with pytest.raises(FileNotFoundError, match="does not exist; download") as err:
        metrics.inception_weights(tmp_path / "missing.pth")
    assert "\n" not in str(err.value)
    cached = tmp_path / "hub" / "checkpoints" / metrics.INCEPTION_FILE
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"")
    assert metrics.inception_weights() == cached  # a cached file is used without the network


@pytest.mark.skipif(HAS_FIDELITY, reason="checks the message shown when the 'fid' extra is missing")
def test_fid_inception_without_extra_says_what_to_install():
    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ImportError, match=r"pip install 'scoresde\[fid\]'"):
        metrics.fid_inception(x, x)
    with pytest.raises(ValueError, match=r"shape \(N, 1 or 3, H, W\)"):
        metrics.fid_inception(torch.zeros(4, 2, 8, 8), x)


@pytest.mark.slow  # builds InceptionV3 three times and runs it at 299x299 on CPU: about 70 s
@pytest.mark.skipif(not HAS_FIDELITY, reason="needs the 'fid' extra (torch-fidelity): pip install 'scoresde[fid]'")
def test_fid_inception_with_a_local_weights_file(tmp_path, monkeypatch):
    """No network: a weights file saved from a randomly initialized extractor stands in for the real one."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with monkeypatch.context() as m:  # build the architecture once without loading any weights
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, strict=True: None)
        m.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {})
        extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path / "random-inception.pth"
    torch.save(extractor.state_dict(), path)
    gen = torch.Generator().manual_seed(0)
    a = torch.rand((4, 1, 8, 8), generator=gen) * 2 - 1
    b = torch.rand((4, 3, 16, 16), generator=gen) * 2 - 1
    assert metrics.fid_inception(a, a, weights_path=path) <= 1e-6
    assert metrics.fid_inception(a, b, weights_path=path) > 0
    assert metrics.inception_features(a, weights_path=path).shape == (4, 2048)

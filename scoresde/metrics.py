"""Sample-quality metrics: Fréchet distances between feature statistics, and the digits metrics.

Fréchet distance (Dowson & Landau 1982; FID: Heusel et al. 2017, arXiv:1706.08500) between the
Gaussians N(mu1, C1) and N(mu2, C2) fitted to two sets of features:

    d^2 = |mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr((C1^{1/2} C2 C1^{1/2})^{1/2}).

`frechet_distance` evaluates the last trace from the eigenvalues of the symmetric positive
semi-definite matrix C1^{1/2} C2 C1^{1/2} (which has the eigenvalues of C1 C2), so it stays real
and finite when the covariances are rank-deficient (fewer samples than features). It returns d^2,
the number every FID implementation reports under the name "FID".

Digits (scikit-learn's 8x8 digits, `scoresde.data.digits`): features are the penultimate
activations of the shipped `scoresde.classifier.DigitsClassifier` (128 features). `digits_quality`
reports for a set of generated images the Fréchet distance to a real split, the histogram of
predicted classes and its entropy (nats; log 10 = 2.303 for a uniform histogram).
`digits_floor` is the same distance between the train and test splits: what a perfect model
that memorizes no test image would score against the test set. Fréchet distances shrink as the
sample sizes grow (the estimate is biased upwards by about tr(C)/N), so compare numbers computed
from equal sample sizes.

FID on Inception features (`fid_inception`) needs the optional extra `pip install 'scoresde[fid]'`
(torch-fidelity): its InceptionV3 port of the TensorFlow FID network, with the TensorFlow-exact
bilinear resize to 299x299, gives the 2048 pool features; the Fréchet distance is computed here.
"""

from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from solvers.validate import check_name

from .classifier import NUM_CLASSES
from .data import to_levels

__all__ = [
    "DigitsQuality", "INCEPTION_URL", "class_entropy", "class_histogram", "classifier_features",
    "digits_floor", "digits_quality", "feature_stats", "fid_inception", "frechet_distance",
    "frechet_distance_features", "inception_features", "inception_weights", "quantize_digits",
]

# --- Fréchet distance ----------------------------------------------------------------------------


def _as_float64(a, name: str) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds non-finite values")
    return a


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F), float64 numpy, of features (N, F) (Tensor or array), N >= 2.

    The covariance is the unbiased estimate (divides by N - 1), as in the reference FID code.
    """
    f = _as_float64(features, "features")
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (N, F) with N >= 2, got {f.shape}")
    mu = f.mean(axis=0)
    d = f - mu
    cov = d.T @ d / (f.shape[0] - 1)
    return mu, cov


def _null_roundoff(w: np.ndarray) -> np.ndarray:
    """Eigenvalues w of a symmetric PSD matrix with those below F * eps * max|w| (roundoff of zeros) set to 0.

    sqrt is not Lipschitz at 0: the roundoff eps * |M| of a zero eigenvalue would add sqrt(eps * |M|)
    to a trace of square roots. The threshold is numpy's matrix_rank tolerance; a true eigenvalue
    below it changes the trace by at most the same amount.
    """
    tol = w.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), np.finfo(np.float64).tiny)
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues at roundoff level -> 0)."""
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(_null_roundoff(w))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Squared Fréchet distance between N(mu1, cov1) and N(mu2, cov2) (module docstring), a float >= 0.

    mu (F,), cov (F, F) symmetric positive semi-definite (Tensors or arrays; computed in float64).
    tr((C1^{1/2} C2 C1^{1/2})^{1/2}) comes from the eigenvalues of that symmetric matrix; eigenvalues
    at roundoff level (below F * eps * the largest, numpy's rank tolerance) count as 0, so rank-deficient
    covariances keep full accuracy. The result is clipped at 0.
    """
    mu1, mu2 = _as_float64(mu1, "mu1"), _as_float64(mu2, "mu2")
    cov1, cov2 = _as_float64(cov1, "cov1"), _as_float64(cov2, "cov2")
    F = mu1.shape[0] if mu1.ndim == 1 else -1
    for name, a, shape in (("mu1", mu1, (F,)), ("mu2", mu2, (F,)), ("cov1", cov1, (F, F)), ("cov2", cov2, (F, F))):
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (mu1 has shape {mu1.shape}), got {a.shape}")
    s1 = _psd_sqrt((cov1 + cov1.T) / 2)
    m = s1 @ ((cov2 + cov2.T) / 2) @ s1
    eig = _null_roundoff(np.linalg.eigvalsh((m + m.T) / 2))
    tr_covmean = np.sqrt(eig).sum()
    diff = mu1 - mu2
    d2 = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean
    return float(max(d2, 0.0))


def frechet_distance_features(features_a, features_b) -> float:
    """Squared Fréchet distance between the Gaussians fitted to features (Na, F) and (Nb, F)."""
    return frechet_distance(*feature_stats(features_a), *feature_stats(features_b))


# --- digits: classifier features, class histogram -----------------------------------------------

DIGITS_SPLITS = ("train", "test")


def _check_digits_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected digits images as a Tensor of shape (N, 1, 8, 8), got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [-1, 1], got dtype {images.dtype}")
    if images.shape[0] < 2:
        raise ValueError(f"need at least 2 images, got {images.shape[0]}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images hold non-finite values")


def quantize_digits(images: Tensor, levels: int = 17, *, dequantized: bool = False) -> Tensor:
    """Clip to [-1, 1] and map to the data's 17 levels (scoresde.data.to_levels), as a generated image
    would be stored, then back to the real images' scaling 2k/16 - 1; same shape and dtype.
    dequantized: the images come from a model trained on dequantized data (map by bin)."""
    k = to_levels(images, levels, dequantized=dequantized).to(images.dtype)
    return 2.0 * k / (levels - 1) - 1.0


def _classifier(classifier):
    if classifier is None:
        from .classifier import load_digits_classifier

        return load_digits_classifier()
    return classifier


def _real_digits(split: str) -> Tensor:
    from .data import digits, to_model_input

    check_name("reference split", split, DIGITS_SPLITS)
    data = digits(split)
    return to_model_input(data.images, data.levels)


def classifier_features(images: Tensor, classifier=None, *, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """Penultimate features (N, F) and logits (N, 10) of the digits classifier (the shipped one when None).

    images: (N, 1, 8, 8) floats in [-1, 1], used as given; runs in the classifier's dtype and
    device, without gradients. Returns CPU tensors.
    """
    classifier = _classifier(classifier)
    p = next(classifier.parameters())
    feats, logits = [], []
    with torch.no_grad():
        for xb in images.split(batch_size):
            h = classifier.features(xb.to(p.device, p.dtype))
            feats.append(h.cpu())
            logits.append(classifier.head(h).cpu())
    return torch.cat(feats), torch.cat(logits)


def class_histogram(logits: Tensor) -> np.ndarray:
    """Fractions (10,) of the predicted classes (argmax of logits (N, 10)); sums to 1."""
    counts = torch.bincount(logits.argmax(1), minlength=NUM_CLASSES)
    return (counts.double() / counts.sum()).numpy()


def class_entropy(histogram) -> float:
    """Entropy -sum p log p of a class histogram, in nats (0 log 0 = 0); at most log 10 for 10 classes."""
    p = _as_float64(histogram, "histogram")
    if p.ndim != 1 or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"histogram must be non-negative fractions (K,) summing to 1, got {p}")
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum()) + 0.0  # + 0.0: no -0.0 for a one-hot histogram


@dataclass(frozen=True)
class DigitsQuality:
    """What `digits_quality` returns.

    fd: squared Fréchet distance in the classifier's penultimate features to the reference split;
    entropy: of the predicted-class histogram, nats (log 10 = 2.303 is uniform); histogram (10,):
    fractions of predicted classes; n: number of images; reference: the split compared against.
    """

    fd: float
    entropy: float
    histogram: np.ndarray
    n: int
    reference: str


def digits_quality(images: Tensor, reference: str = "test", *, classifier=None, quantize: bool = True,
                   dequantized: bool = False) -> DigitsQuality:
    """Classifier-based quality of generated digits (N, 1, 8, 8) in [-1, 1], N >= 2, against a real split.

    reference: "test" (360 images) or "train" (1,437). quantize: clip the images to [-1, 1] and map
    them to the data's 17 levels first, as the real images are stored (as FID pipelines save 8-bit
    images); False feeds them as given. dequantized: the model was trained on dequantized data
    (its TrainConfig `dequantize`), so samples map to levels by dequantization bin rather than by
    rounding (`scoresde.data.to_levels`). classifier: a `DigitsClassifier` (the shipped one when None).
    """
    _check_digits_images(images)
    if dequantized and not quantize:
        raise ValueError("dequantized=True describes how to quantize; it needs quantize=True")
    check_name("reference split", reference, DIGITS_SPLITS)
    classifier = _classifier(classifier)
    x = quantize_digits(images, dequantized=dequantized) if quantize else images
    feats, logits = classifier_features(x, classifier)
    ref_feats, _ = classifier_features(_real_digits(reference), classifier)
    hist = class_histogram(logits)
    return DigitsQuality(
        fd=frechet_distance_features(feats, ref_feats), entropy=class_entropy(hist), histogram=hist,
        n=int(images.shape[0]), reference=reference,
    )


def digits_floor(reference: str = "test", *, classifier=None) -> float:
    """Fréchet distance between the two real splits in classifier features: the floor of `digits_quality(...).fd`.

    reference "test" compares all 1,437 train images with it (and "train" the 360 test images).
    """
    check_name("reference split", reference, DIGITS_SPLITS)
    classifier = _classifier(classifier)
    other = "train" if reference == "test" else "test"
    a, _ = classifier_features(_real_digits(other), classifier)
    b, _ = classifier_features(_real_digits(reference), classifier)
    return frechet_distance_features(a, b)


# --- FID on Inception features (optional extra: torch-fidelity) -----------------------------------

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]


def _weights_hint() -> str:
    return (f"download {INCEPTION_URL} on a machine with internet access and pass weights_path='/path/to/"
            f"{INCEPTION_FILE}' (or copy it to {Path(torch.hub.get_dir()) / 'checkpoints' / INCEPTION_FILE})")


def inception_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """Path of the FID Inception weights: `weights_path` if given, else the torch hub cache, downloaded there when missing.

    Raises a one-line error saying how to supply the file when it is missing and cannot be fetched.
    """
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights file {str(path)!r} does not exist; {_weights_hint()}")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_URL, str(cached), progress=False)
    except (OSError, urllib.error.URLError, ValueError) as e:
        reason = " ".join(str(e).split())
        raise RuntimeError(f"cannot fetch the FID Inception weights ({type(e).__name__}: {reason}); {_weights_hint()}") from e
    return cached


def _inception_extractor(weights_path: str | os.PathLike | None, device: torch.device):
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        raise ImportError(f"FID on Inception features needs the 'fid' extra: pip install 'scoresde[fid]' ({e})") from e
    path = inception_weights(weights_path)
    try:
        # refuse a file that holds anything but tensors before torch-fidelity reads it with weights_only=False
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a PyTorch state dict of tensors ({type(e).__name__}: {e})") from e
    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)).to(device)


def _to_uint8_rgb(images: Tensor) -> Tensor:
    """Images (N, 1 or 3, H, W): floats in [-1, 1] or uint8 -> uint8 RGB, as a PNG of the images would hold."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise ValueError(f"expected float images in [-1, 1] or uint8 images, got dtype {images.dtype}")
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images hold non-finite values")
        images = torch.round((images.clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _pool_features(extractor, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    images = _to_uint8_rgb(images)
    with torch.no_grad():
        return torch.cat([extractor(xb.to(device))[0].cpu() for xb in images.split(batch_size)])


def inception_features(
    images: Tensor, *, weights_path: str | os.PathLike | None = None, batch_size: int = 100,
    device: str | torch.device | None = None,
) -> Tensor:
    """2048 pool features (N, 2048) float32 of images (N, 1 or 3, H, W), floats in [-1, 1] or uint8.

    Float images are clipped and rounded to 8 bits first (as when saved as PNG); gray images are
    repeated over RGB; torch-fidelity resizes to 299x299 as TensorFlow does. Needs the 'fid' extra.
    """
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a Tensor (N, C, H, W), got {type(images).__name__}")
    _to_uint8_rgb(images[:1])  # shape and dtype errors before the network is built
    device = images.device if device is None else torch.device(device)
    return _pool_features(_inception_extractor(weights_path, device), images, batch_size, device)


def fid_inception(
    images_a: Tensor, images_b: Tensor, *, weights_path: str | os.PathLike | None = None, batch_size: int = 100,
    device: str | torch.device | None = None,
) -> float:
    """FID (squared Fréchet distance of Inception pool features) between two image sets (N, 1 or 3, H, W).

    Images: floats in [-1, 1] or uint8 (see `inception_features`). weights_path: the torch-fidelity
    Inception weights file (INCEPTION_URL); when None they are taken from, or downloaded into, the
    torch hub cache, and a one-line error says how to supply the file when that fails. The
    reference FIDs in the literature use 50,000 generated images: FID is biased upwards at small N.
    """
    for name, im in (("images_a", images_a), ("images_b", images_b)):
        if not isinstance(im, Tensor) or im.ndim != 4 or im.shape[0] < 2:
            raise ValueError(f"{name} must be a Tensor (N, C, H, W) with N >= 2, got {getattr(im, 'shape', type(im))}")
        _to_uint8_rgb(im[:1])
    device = images_a.device if device is None else torch.device(device)
    extractor = _inception_extractor(weights_path, device)
    fa = _pool_features(extractor, images_a, batch_size, device)
    fb = _pool_features(extractor, images_b, batch_size, device)
    return frechet_distance_features(fa, fb)

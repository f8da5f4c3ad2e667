"""Non-leaking augmentation: the transformations, their conditioning vectors, the U-Net input, training."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scoresde.augment import AUGMENTATIONS, augment, augment_dim
from scoresde.nn import UNet, digits
from scoresde.train import TrainConfig, load_checkpoint, load_model, train

TINY = dict(net_options={"ch": 8, "num_res_blocks": 1, "ch_mult": (1, 2), "attn_resolutions": (4,)},
            batch_size=16, lr=1e-3, warmup_steps=3, ema_decay=0.9, log_every=1, progress=False, device="cpu")


def grid(b=1, n=4):
    return torch.arange(b * n * n).reshape(b, 1, n, n)


def test_dims_and_identity_at_p_zero():
    assert augment_dim(()) == 0 and augment_dim(AUGMENTATIONS) == 1 + 1 + 3 + 2
    x = grid(5)
    y, vec = augment(x, AUGMENTATIONS, 0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, x) and vec.shape == (5, 7) and not vec.any()


def test_each_transformation_and_its_label():
    x = grid()
    g = torch.Generator().manual_seed(0)
    y, vec = augment(x, ("xflip",), 1.0, generator=g)
    assert torch.equal(y, x.flip(-1)) and vec.tolist() == [[1.0]]
    y, vec = augment(x, ("yflip",), 1.0, generator=g)
    assert torch.equal(y, x.flip(-2)) and vec.tolist() == [[1.0]]
    for seed in range(6):
        y, vec = augment(x, ("rot90",), 1.0, generator=torch.Generator().manual_seed(seed))
        k = int(vec.argmax()) + 1
        assert vec.sum() == 1 and torch.equal(y, torch.rot90(x, k, dims=(-2, -1)))
    seen = set()
    for seed in range(40):
        y, vec = augment(x, ("translate",), 1.0, max_shift=1, fill=-7, generator=torch.Generator().manual_seed(seed))
        dx, dy = (int(v) for v in vec[0])
        seen.add((dx, dy))
        # y[i, j] = x[i - dy, j - dx] inside the image, the fill value where that falls outside
        for i in range(4):
            for j in range(4):
                inside = 0 <= i - dy < 4 and 0 <= j - dx < 4
                assert int(y[0, 0, i, j]) == (int(x[0, 0, i - dy, j - dx]) if inside else -7)
    assert seen == {(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)}


@settings(deadline=None, max_examples=30)
@given(seed=st.integers(0, 2**31 - 1), p=st.floats(0.0, 1.0))
def test_flips_and_turns_permute_pixels_and_zero_means_identity(seed, p):
    x = torch.randperm(2 * 16).reshape(2, 1, 4, 4)
    y, vec = augment(x, ("xflip", "yflip", "rot90"), p, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values)  # no pixel lost or made
    identity = ~vec.bool().any(1)
    assert torch.equal(y[identity], x[identity])


def test_draws_follow_the_generator_and_p():
    x = grid(2000, 2)
    a = augment(x, ("xflip", "translate"), 0.3, generator=torch.Generator().manual_seed(1))
    b = augment(x, ("xflip", "translate"), 0.3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert abs(float(a[1][:, 0].mean()) - 0.3) < 0.04  # xflip applied with probability p


@pytest.mark.parametrize("kw,match", [
    (dict(kinds=("shear",)), r"unknown augmentation\(s\) \['shear'\]; choose from"),
    (dict(kinds=("xflip", "xflip")), "repeat"),
    (dict(p=1.5), r"p must be a number in \[0, 1\]"),
    (dict(max_shift=0), "max_shift must be an integer >= 1"),
])
def test_errors(kw, match):
    args = dict(kinds=("xflip",), p=0.5, max_shift=1) | kw
    with pytest.raises(ValueError, match=match):
        augment(grid(), args["kinds"], args["p"], max_shift=args["max_shift"])


def test_rot90_needs_square_images():
    with pytest.raises(ValueError, match="rot90 needs square images"):
        augment(torch.zeros(1, 1, 2, 3), ("rot90",), 1.0)


def test_unet_without_labels_is_the_identity_transformation():
    torch.manual_seed(0)
    net = UNet(digits(ch=8, augment_dim=3)).eval()
    for p in net.parameters():  # zero-initialised layers would hide the embedding
        torch.nn.init.normal_(p, std=0.2)
    x, c = torch.randn(2, 1, 8, 8), torch.randn(2)
    torch.testing.assert_close(net(x, c), net(x, c, augment_labels=torch.zeros(2, 3)), rtol=0, atol=0)
    assert not torch.allclose(net(x, c), net(x, c, augment_labels=torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])))
    with pytest.raises(ValueError, match=r"expected augment_labels of shape \(2, 3\)"):
        net(x, c, augment_labels=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="augment_dim=0 but augment_labels were given"):
        UNet(digits(ch=8))(x, c, augment_labels=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="augment_dim must be an integer >= 0"):
        digits(augment_dim=-1)


def test_training_with_augmentation(tmp_path):
    cfg = TrainConfig(**TINY, steps=3, augment=("translate", "xflip"), augment_p=0.5, out_dir=str(tmp_path))
    res = train(cfg)
    assert res.step == 3 and res.loss == res.loss
    assert res.net.config.augment_dim == 3 and res.net.augment_embed.weight.grad is not None
    ckpt = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert ckpt.config.augment == ("translate", "xflip") and ckpt.unet_config.augment_dim == 3
    model = load_model(tmp_path / "checkpoint.safetensors")  # sampling needs no augmentation input
    assert model.eps(torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)).shape == (2, 1, 8, 8)
    # a second phase may change augment_p (not the kinds: they shape the network)
    assert train(TrainConfig(**TINY, steps=4, augment=("translate", "xflip"), augment_p=0.0,
                             out_dir=str(tmp_path))).step == 4
    with pytest.raises(ValueError, match="configuration differs in augment"):
        train(TrainConfig(**TINY, steps=5, augment=("translate",), augment_p=0.5, out_dir=str(tmp_path)))


def test_augmentation_off_keeps_runs_unchanged(tmp_path):
    a = train(TrainConfig(**TINY, steps=2, out_dir=str(tmp_path / "a")))
    b = train(TrainConfig(**TINY, steps=2, augment=("xflip",), augment_p=0.0, out_dir=str(tmp_path / "b")))
    assert a.loss == b.loss  # p = 0 draws nothing; the extra embedding is created after the others' init


def test_config_takes_a_comma_separated_string():
    assert TrainConfig(augment="xflip,translate").augment == ("xflip", "translate")
    assert TrainConfig(augment="").augment == ()


@pytest.mark.parametrize("kw,match", [
    (dict(augment=("blur",)), "unknown augmentation"),
    (dict(augment="translate,blur"), r"unknown augmentation\(s\) \['blur'\]"),
    (dict(augment_p=0.2), "augment names no kind"),
    (dict(augment=("xflip",), augment_p=2.0), "augment_p must be"),
    (dict(augment_max_shift=0), "augment_max_shift must be an integer >= 1"),
    (dict(net_options={"augment_dim": 2}), "augment_dim"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)

"""The Diffusion Transformer: parameter counts, shapes, adaLN-Zero initialization, configuration, files, training."""

import pytest
import torch
from safetensors.torch import load_file, save_file

import scoresde
from scoresde import VPSDE, ScoreModel
from scoresde.losses import dsm_loss
from scoresde.nn import UNet, count_parameters, digits
from scoresde.nn.dit import (
    DIT_PRESETS,
    PAPER_PARAMETERS_M,
    DiT,
    DiTBlock,
    DiTConfig,
    dit_digits,
    dit_patches,
    dit_preset,
    imagenet_preset,
    sincos_pos_embed_2d,
)


def tiny(**kw) -> DiTConfig:
    return dit_digits(**{"hidden_size": 32, "depth": 2, "num_heads": 2, "embedding_dim": 16, **kw})


def randomize(net: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Leave the zero initialization, so that every path carries signal and gradient."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(std * torch.randn(p.shape, generator=gen))
    return net


# --- parameter counts ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [f"dit_{s}{p}" for s in ("s", "b", "l", "xl") for p in (2, 4, 8)])
def test_paper_presets_match_table_4(name):
    # Peebles & Xie 2023, Table 4: S 33 M, B 130 M, L 458 M, XL 675 M (ImageNet 256: latents 32x32x4,
    # 1000 classes, learned variance); built on the meta device, nothing is allocated
    cfg = dit_preset(name)
    with torch.device("meta"):
        n = count_parameters(DiT(cfg))
    paper = PAPER_PARAMETERS_M[name[4:-1]] * 1e6
    assert abs(n - paper) / paper < 0.02
    assert n == cfg.parameter_count()  # the analytic count agrees with the built net


def test_dit_xl2_exact_count():
    # the official DiT-XL/2 prints 675,129,632 parameters: it counts its frozen 256 x 1152 position
    # embedding, which is a buffer here
    assert dit_preset("dit_xl2").parameter_count() == 674_834_720 == 675_129_632 - 256 * 1152


def test_small_presets():
    assert count_parameters(DiT(dit_digits())) == dit_digits().parameter_count() == 1_864_580
    unet = count_parameters(UNet(digits()))
    assert abs(1_864_580 - unet) / unet < 0.02  # about the shipped digits U-Net's 1,901,601
    assert dit_patches().parameter_count() == 4_163_916
    assert dit_patches(image_size=32).parameter_count() == 4_163_916  # tokens change, parameters do not


def test_preset_names():
    paper = {f"dit_{s}{p}" for s in ("s", "b", "l", "xl") for p in (2, 4, 8)}
    assert paper | {"dit_digits", "dit_patches"} == set(DIT_PRESETS)
    assert dit_preset("dit_b4", num_classes=None).num_classes is None
    assert dit_preset("dit_l4") == imagenet_preset("l", 4) == DiTConfig(
        image_size=32, in_channels=4, patch_size=4, hidden_size=1024, depth=24, num_heads=16, num_classes=1000,
        learn_variance=True)
    with pytest.raises(ValueError, match="choose one of"):
        dit_preset("dit_m2")


# --- shapes and conditioning -----------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(), dict(num_classes=10), dict(learn_variance=True), dict(patch_size=1),
                                dict(patch_size=4, embedding="fourier", embedding_scale=0.5),
                                dict(augment_dim=3, out_channels=2)])
def test_forward_shapes_and_gradients(kw):
    cfg = tiny(**kw)
    net = randomize(DiT(cfg))
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    y = torch.tensor([0, 9, 10]) if cfg.num_classes else None
    aug = torch.randn(3, 3) if cfg.augment_dim else None
    out = net(x, torch.tensor([-3.0, 0.2, 5.0]), y, augment_labels=aug)
    assert out.shape == (3, cfg.output_channels, 8, 8)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_rgb_and_float64():
    net = randomize(DiT(dit_patches(hidden_size=32, depth=1, num_heads=2))).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    out = net(x, torch.zeros(2, dtype=torch.float64))
    assert out.shape == x.shape and out.dtype == torch.float64


def test_null_label_is_none_and_labels_matter():
    net = randomize(DiT(tiny(num_classes=10))).eval()
    x, c = torch.randn(2, 1, 8, 8), torch.zeros(2)
    torch.testing.assert_close(net(x, c), net(x, c, torch.tensor([10, 10])))
    assert not torch.allclose(net(x, c, torch.tensor([3, 3])), net(x, c))


def test_noise_input_and_position_matter():
    net = randomize(DiT(tiny())).eval()
    x = torch.randn(1, 1, 8, 8).expand(2, 1, 8, 8)
    out = net(x, torch.tensor([-3.0, 3.0]))
    assert not torch.allclose(out[0], out[1])
    # a constant image: every patch has the same content, so only the position embedding tells them apart
    out = net(torch.ones(1, 1, 8, 8), torch.zeros(1))
    assert not torch.allclose(out[..., :2, :2], out[..., 2:4, 2:4])


def test_input_errors():
    net = DiT(tiny())
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 1, 8, 8\)"):
        net(torch.zeros(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="c_noise of shape"):
        net(torch.zeros(2, 1, 8, 8), torch.zeros(3))
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer labels"):
        DiT(tiny(num_classes=3))(torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.zeros(2))


# --- adaLN-Zero and the layout ---------------------------------------------------------------------

def test_adaln_zero_blocks_start_as_identity_and_output_at_zero():
    net = DiT(tiny(depth=3, num_classes=10, learn_variance=True))
    seen = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append((args[0], out))) for b in net.blocks]
    x = torch.randn(4, 1, 8, 8)
    out = net(x, torch.randn(4), torch.tensor([0, 1, 2, 10]))
    for h in hooks:
        h.remove()
    assert len(seen) == 3
    for h_in, h_out in seen:
        assert torch.equal(h_in, h_out)  # every block's output is its input, exactly
    assert torch.equal(out, torch.zeros(4, 2, 8, 8))  # the final layer starts at zero


def test_block_is_identity_at_zero_modulation_only():
    block = DiTBlock(16, 2, 64)
    h, c = torch.randn(2, 5, 16), torch.randn(2, 16)
    assert torch.equal(block(h, c), h)
    torch.nn.init.normal_(block.adaLN_modulation.weight, std=0.1)
    assert not torch.allclose(block(h, c), h)


def test_unpatchify_inverts_patchify_order():
    # a token holds its p x p x C values in (row, column, channel) order, tokens row-major over the grid
    cfg = tiny(patch_size=2, out_channels=3)
    net = DiT(cfg)
    x = torch.randn(2, 3, 8, 8)
    g, p = cfg.grid_size, cfg.patch_size
    tokens = x.reshape(2, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(2, g * g, p * p * 3)
    assert torch.equal(net.unpatchify(tokens), x)
    # the patch embedding's token k is the patch at row k // g, column k % g
    emb = torch.nn.functional.conv2d(x[:, :1], net.patch_embed.weight, net.patch_embed.bias, stride=p)
    torch.testing.assert_close(net.patchify(x[:, :1])[:, g + 2], emb[:, :, 1, 2] + net.pos_embed[g + 2])


def test_sincos_position_embedding():
    pos = sincos_pos_embed_2d(8, 3)  # (9, 8): [sin, cos] of the row over 4 features, then of the column
    assert pos.shape == (9, 8)
    torch.testing.assert_close(pos[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1], dtype=torch.float64))
    k = 1 * 3 + 2  # row 1, column 2; the first frequency is 1
    one, two = torch.tensor(1.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    torch.testing.assert_close(pos[k, [0, 2, 4, 6]], torch.stack([one.sin(), one.cos(), two.sin(), two.cos()]))
    assert len({tuple(r.tolist()) for r in pos}) == 9  # every position distinct
    net = DiT(tiny())
    assert "pos_embed" not in net.state_dict()  # fixed: rebuilt from the configuration, not saved


# --- configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(patch_size=3), "patch_size 3 must divide image_size 8"),
    (dict(hidden_size=36, num_heads=8), "hidden_size 36 must be divisible by num_heads 8"),
    (dict(hidden_size=34, num_heads=2), "hidden_size 34 must be divisible by 4"),
    (dict(depth=0), "depth must be"),
    (dict(num_heads=0), "num_heads must be"),
    (dict(hidden_size=10**6), "hidden_size must be"),
    (dict(image_size=0), "image_size must be"),
    (dict(mlp_ratio=0.0), "mlp_ratio"),
    (dict(embedding="learned"), "choose one of"),
    (dict(embedding_dim=7), "embedding_dim must be even"),
    (dict(num_classes=0), "num_classes must be"),
    (dict(learn_variance=1), "learn_variance"),
    (dict(image_size=2048, patch_size=1), "tokens"),
])
def test_config_errors_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_config_dict_round_trip():
    cfg = tiny(num_classes=10, learn_variance=True)
    assert DiTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown DiTConfig field"):
        DiTConfig.from_dict({**cfg.to_dict(), "ch": 3})


def test_state_dict_safetensors_round_trip(tmp_path):
    cfg = tiny(num_classes=10, learn_variance=True)
    net = randomize(DiT(cfg)).eval()
    save_file(net.state_dict(), tmp_path / "dit.safetensors", metadata={"dit_config": str(cfg.to_dict())})
    other = DiT(cfg).eval()
    other.load_state_dict(load_file(tmp_path / "dit.safetensors"))
    x, c, y = torch.randn(2, 1, 8, 8), torch.randn(2), torch.tensor([1, 10])
    assert torch.equal(net(x, c, y), other(x, c, y))


# --- with ScoreModel: training and sampling --------------------------------------------------------

def test_short_training_run_lowers_the_loss():
    # 40 Adam steps of the eps loss on the digits with a 40 k-parameter DiT: the loss on a fixed
    # batch (fixed t and noise) falls from 1 (the zero output) by a clear margin
    from scoresde.data import digits as digits_data, to_model_input

    torch.manual_seed(0)
    data = to_model_input(digits_data("train").images, 17)
    net = DiT(tiny(hidden_size=32, depth=2))
    model = ScoreModel(net, VPSDE(), "eps", c_noise="log_noise")
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)

    def fixed_loss() -> float:
        with torch.no_grad():
            return dsm_loss(model, data[:256], generator=torch.Generator().manual_seed(1)).mean().item()

    before = fixed_loss()
    for _ in range(40):
        idx = torch.randint(len(data), (64,), generator=gen)
        loss = dsm_loss(model, data[idx], generator=gen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_loss()
    assert before == pytest.approx(1.0, abs=0.05)
    assert after < 0.6 * before


def test_samples_with_ddim():
    net = randomize(DiT(tiny()), std=0.02)
    model = ScoreModel(net, VPSDE(), "eps")
    model.image_shape = net.config.image_shape
    res = scoresde.sample(model, solver="ddim", steps=5, n=4, seed=0)
    assert res.x.shape == (4, 1, 8, 8) and torch.isfinite(res.x).all() and res.nfe == 5


def test_learned_variance_through_score_model():
    from scoresde.param import has_learned_variance

    net = randomize(DiT(tiny(learn_variance=True)), std=0.02)
    model = ScoreModel(net, VPSDE(), "eps", learned_variance=True)
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 0.5)
    eps, v = model.eps_and_variance(x, t)
    assert has_learned_variance(model) and eps.shape == v.shape == x.shape
    torch.testing.assert_close(eps, model.eps(x, t))


def test_class_conditional_guided_sampling():
    net = randomize(DiT(tiny(num_classes=10)), std=0.02)
    model = ScoreModel(net, VPSDE(), "eps")
    res = scoresde.sample(model, solver="ddim", steps=3, shape=(1, 8, 8), y=torch.tensor([1, 2]), guidance_scale=2.0,
                          null_label=10, seed=0)
    assert res.x.shape == (2, 1, 8, 8) and torch.isfinite(res.x).all()


def test_labels_outside_the_classes_and_null_label_are_refused():
    net = DiT(tiny(num_classes=3)).eval()
    x, c = torch.zeros(2, 1, 8, 8), torch.zeros(2)
    for y in ([0, 4], [-1, 0], [7, 2]):
        with pytest.raises(ValueError, match=r"labels y must be in 0\.\.3 \(3 classes; 3 is the null label\), got \["):
            net(x, c, torch.tensor(y))
    assert net(x, c, torch.tensor([0, 3])).shape == x.shape  # 3: the null label

"""The DDPM++ U-Net: parameter counts, shapes, conditioning, initialization, configuration errors."""

import pytest
import torch

from scoresde.nn import UNet, UNetConfig, count_parameters, ddpmpp_cifar10, digits, preset
from scoresde.nn.layers import AttnBlock, FourierEmbedding, PositionalEmbedding, ResBlock


def tiny(**kw) -> UNetConfig:
    return digits(**{"ch": 8, "num_res_blocks": 1, **kw})


def test_ddpmpp_cifar10_parameter_count():
    # DDPM++ cont. (Song et al. 2021, Table 3): 61.8 M parameters; pinned within 2 %
    with torch.device("meta"):
        n = count_parameters(UNet(ddpmpp_cifar10()))
    assert abs(n - 61.8e6) / 61.8e6 < 0.02
    assert n == 61_804_419  # the exact count of this layout; a change here is a change of architecture


def test_ddpmpp_film_variant_count():
    # FiLM doubles each block's embedding projection: 2 * 4ch -> 2 C_out instead of C_out
    with torch.device("meta"):
        assert count_parameters(UNet(ddpmpp_cifar10(film=True))) == 66_926_211


def test_digits_preset_count_and_shape():
    net = UNet(digits())
    assert count_parameters(net) == 1_901_601
    x = torch.randn(3, 1, 8, 8)
    assert net(x, torch.randn(3)).shape == x.shape


def test_ddpmpp_layout():
    with torch.device("meta"):
        net = UNet(ddpmpp_cifar10())
    blocks = [m for m in net.modules() if isinstance(m, ResBlock)]
    attns = [m for m in net.modules() if isinstance(m, AttnBlock)]
    # down 4 x 4 + 3 downsampling, middle 2, up 4 x 5 + 3 upsampling
    assert len(blocks) == 16 + 3 + 2 + 20 + 3
    assert sum(b.resample == "down" for b in blocks) == 3 and sum(b.resample == "up" for b in blocks) == 3
    assert len(attns) == 4 + 1 + 1  # at 16x16: after each down block, once on the way up; middle


@pytest.mark.parametrize("kw", [dict(), dict(film=False), dict(embedding="fourier", embedding_scale=0.5),
                                dict(ch_mult=(1, 2), attn_resolutions=()), dict(num_res_blocks=0)])
def test_forward_shapes_and_gradients(kw):
    torch.manual_seed(0)
    net = UNet(tiny(**kw))
    for p in net.parameters():  # leave the zero initialization so every path carries gradient
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    out = net(x, torch.tensor([0.3, -2.0]))
    assert out.shape == x.shape
    out.square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_output_starts_at_zero():
    # the output convolution starts at zero: an eps network starts predicting 0 (loss exactly 1)
    net = UNet(tiny())
    assert torch.equal(net(torch.randn(2, 1, 8, 8), torch.zeros(2)), torch.zeros(2, 1, 8, 8))


def test_residual_block_starts_as_rescaled_identity():
    block = ResBlock(8, 8, 16)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(block(x, torch.randn(2, 16)), x / 2**0.5)


def test_noise_embedding_changes_output():
    torch.manual_seed(0)
    net = UNet(tiny(dropout=0.0)).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 1, 8, 8).expand(2, 1, 8, 8)
    out = net(x, torch.tensor([-3.0, 3.0]))
    assert not torch.allclose(out[0], out[1])


def test_embeddings():
    pos = PositionalEmbedding(8, scale=2.0)
    e = pos(torch.tensor([0.0, 1.0]))
    assert e.shape == (2, 8)
    torch.testing.assert_close(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(e[1, 0], torch.sin(torch.tensor(2.0)))  # highest frequency = scale
    four = FourierEmbedding(8, scale=1.0)
    assert four(torch.zeros(3)).shape == (3, 8)
    assert "freqs" in four.state_dict()  # random frequencies travel with the checkpoint


def test_class_conditioning_and_null_class():
    torch.manual_seed(0)
    net = UNet(tiny(num_classes=3, dropout=0.0)).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, c = torch.randn(2, 1, 8, 8), torch.zeros(2)
    null = torch.full((2,), 3)
    torch.testing.assert_close(net(x, c), net(x, c, null))  # y=None is the null class
    assert not torch.allclose(net(x, c, torch.tensor([0, 0])), net(x, c, torch.tensor([1, 1])))
    assert net.class_embed.num_embeddings == 4
    with pytest.raises(ValueError, match="integer labels"):
        net(x, c, torch.zeros(2))
    with pytest.raises(ValueError, match="unconditional"):
        UNet(tiny())(x, c, torch.zeros(2, dtype=torch.long))


def test_input_shape_errors():
    net = UNet(tiny())
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 1, 8, 8\)"):
        net(torch.randn(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match=r"expected c_noise of shape \(2,\)"):
        net(torch.randn(2, 1, 8, 8), torch.zeros(2, 1))


@pytest.mark.parametrize("kw,match", [
    (dict(attn_resolutions=(3,)), "choose from"),
    (dict(image_size=6), "divisible"),
    (dict(embedding="learned"), "choose one of"),
    (dict(dropout=1.0), "dropout"),
    (dict(ch_mult=()), "ch_mult"),
    (dict(num_classes=0), "num_classes"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        digits(**kw)


def test_config_round_trip_and_presets():
    cfg = ddpmpp_cifar10(num_classes=10)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    assert preset("digits", ch=16).ch == 16
    with pytest.raises(ValueError, match="choose one of"):
        preset("ncsnpp")
    with pytest.raises(ValueError, match="unknown UNetConfig field"):
        UNetConfig.from_dict({"channels": 3})


def test_channels_last_matches():
    torch.manual_seed(0)
    net = UNet(tiny(dropout=0.0)).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, c = torch.randn(2, 1, 8, 8), torch.randn(2)
    ref = net(x, c)
    net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last), c), ref, rtol=1e-4, atol=1e-5)

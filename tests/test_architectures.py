"""Every architecture, every path: feature layouts (channels-first, channels-last, tokens), presets found by
architecture, capture under in-place activations, the modified-gradient LRP rules (values unchanged, agreement with
an explicit LRP-0 computation on a two-block transformer, conservation), and class, mine and neuron runs end to end
on random-weight ViT, Swin, ConvNeXt, RegNet and VGG at small resolution."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

import vital
from vital.errors import VitalError
from vital.features import FeatureExtractor, LayoutProbe, layer_table
from vital.layout import Layout, from_shape, to_map, to_positions
from vital.models import load_model
from vital.models.presets import PRESETS, architecture, preset_for
from vital.references.images import from_images
from vital.references.mining import mine
from vital.relevance import RelevanceEngine
from vital.relevance.modified_gradient import ModifiedGradientRelevance, RuleMode, _mha


def _random(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    m = torchvision.models.get_model(name, weights=None, **kw).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


# ---- layouts ----------------------------------------------------------------------------------------------------


def test_layout_from_shape_and_views():
    assert from_shape((2, 8, 5, 5)) is Layout.CHANNELS_FIRST
    assert from_shape((2, 5, 5, 8)) is Layout.CHANNELS_LAST
    assert from_shape((2, 17, 8)) is Layout.TOKENS and from_shape((2, 8)) is Layout.VECTOR
    assert from_shape((2, 5, 5, 5)) is None  # cannot tell: probed
    t = torch.arange(2 * 3 * 3 * 4.0).reshape(2, 3, 3, 4)  # channels-last, 4 channels
    assert torch.equal(to_positions(t, Layout.CHANNELS_LAST), t.permute(0, 3, 1, 2).flatten(2))
    tokens = torch.randn(2, 1 + 9, 6)  # a class token and a 3x3 grid
    grid = to_map(tokens, Layout.TOKENS)
    assert grid.shape == (2, 6, 3, 3) and torch.equal(grid[:, :, 1, 2], tokens[:, 1 + 5])
    assert to_positions(tokens, Layout.TOKENS).shape == (2, 6, 10)


class _ChannelsLast(nn.Module):
    """5 channels on a 5x5 grid, channels-last: the shape alone cannot tell."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 4, 4)
        self.norm = nn.LayerNorm(5)

    def forward(self, x):
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


def test_ambiguous_layout_is_probed_at_another_size():
    net = _ChannelsLast().eval()
    x = torch.randn(1, 3, 20, 20)
    assert LayoutProbe.layout(net, "norm", (1, 5, 5, 5), x) is Layout.CHANNELS_LAST
    assert LayoutProbe.layout(net, "conv", (1, 5, 5, 5), x) is Layout.CHANNELS_FIRST
    feats = FeatureExtractor(net, ["norm"])(x)["norm"]
    assert torch.equal(feats, net(x).permute(0, 3, 1, 2).flatten(2))


def test_swin_and_vit_channels_are_channels_and_embedding_dimensions():
    swin = _random("swin_t")
    rows = {r.name: r for r in layer_table(swin, torch.zeros(1, 3, 64, 64))}
    assert rows["features.1"].layout is Layout.CHANNELS_LAST and rows["features.1"].channels == 96
    assert rows["features.5"].channels == 384 and rows["features.0.0"].channels == 96
    vit = _random("vit_b_16", image_size=32)
    rows = {r.name: r for r in layer_table(vit, torch.zeros(1, 3, 32, 32))}
    assert rows["encoder.layers.encoder_layer_3"].layout is Layout.TOKENS
    assert rows["encoder.layers.encoder_layer_3"].channels == 768


def test_capture_is_not_overwritten_by_an_inplace_relu():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    conv = FeatureExtractor(net, ["0", "2"], view="raw")(x)["0"]
    expected = F.conv2d(x, net[0].weight, net[0].bias)
    assert (expected < 0).any() and torch.equal(conv, expected)


# ---- presets by architecture ------------------------------------------------------------------------------------


def test_presets_are_found_by_architecture_not_name():
    with torch.device("meta"):
        dense = torchvision.models.densenet121(weights=None)
        wrapped = nn.Sequential(nn.Identity(), torchvision.models.vit_b_16(weights=None))
        vit_l = torchvision.models.vit_l_32(weights=None)
        conv = torchvision.models.convnext_base(weights=None)
    assert preset_for(dense) == PRESETS["densenet121"] and preset_for(dense).layer_weights[-1] == 100
    assert architecture(wrapped) == ("vit_b_16", "1")
    assert preset_for(wrapped).layers == tuple(f"1.{n}" for n in PRESETS["vit_b_16"].layers)
    assert preset_for(vit_l).layers == PRESETS["vit_l_32"].layers
    assert preset_for(conv).layer_weights == (10, 1, 1, 1, 1)
    named = load_model(_random("densenet121"), name="my-net", size=64)
    assert named.preset.layer_weights == (1, 1, 1, 1, 100)


def test_generic_rule_is_announced_and_finds_token_blocks():
    with pytest.warns(UserWarning, match="no preset for SwinTransformer"):
        swin = preset_for(_random("swin_t"), 64)
    assert swin.layers == ("features.0.0", "features.1", "features.3", "features.5", "features.7")

    class Wrapper(nn.Module):  # a ViT that our table does not know by structure: 6 layers
        def __init__(self):
            super().__init__()
            self.vit = _random("vit_b_16", image_size=32)
            self.vit.encoder.layers = self.vit.encoder.layers[:6]

        def forward(self, x):
            return self.vit(x)

    with pytest.warns(UserWarning, match="no preset"):
        p = preset_for(Wrapper(), 32)
    assert p.layers == ("vit.conv_proj", *(f"vit.encoder.layers.encoder_layer_{i}" for i in (0, 2, 3, 5)))


# ---- the modified-gradient rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kw,layer", [("vit_b_16", {"image_size": 32}, "encoder.layers.encoder_layer_5"),
                                           ("swin_t", {}, "features.5"), ("convnext_tiny", {}, "features.5"),
                                           ("regnet_y_400mf", {}, "trunk_output.block3")])
def test_rule_mode_keeps_the_forward_values(name, kw, layer):
    m = _random(name, **kw)
    x = torch.randn(2, 3, 32 if kw else 64, 32 if kw else 64)
    fe = FeatureExtractor(m, [layer], view="raw")
    with torch.no_grad():
        plain = fe(x)[layer]
        with RuleMode():
            ruled = fe(x)[layer]
    torch.testing.assert_close(ruled, plain, rtol=1e-4, atol=1e-5)


def test_mha_replay_matches_torch_with_masks_and_weights():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=False).eval()
    q = torch.randn(5, 3, 8)
    mask = torch.rand(5, 5) > 0.7
    mask[:, 0] = False  # every query keeps a key: no row of -inf only
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[1, 4] = True
    args = (q, q, q, 8, 2, mha.in_proj_weight, mha.in_proj_bias, None, None, False, 0.0, mha.out_proj.weight,
            mha.out_proj.bias)
    for kw in ({}, {"attn_mask": mask}, {"attn_mask": mask, "key_padding_mask": pad},
               {"attn_mask": mask.float() * -3.0, "key_padding_mask": pad}):
        want, want_w = F.multi_head_attention_forward(*args, training=False, need_weights=True, **kw)
        got, got_w = _mha(*args, training=False, need_weights=True, **kw)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class _Toy(nn.Module):
    """Patch embedding (4x4 patches) and two pre-norm transformer blocks."""

    def __init__(self, d: int = 8, heads: int = 2):
        super().__init__()
        self.embed = nn.Conv2d(3, d, 4, 4)
        self.blocks = nn.ModuleList([_Block(d, heads), _Block(d, heads)])
        for p in self.parameters():  # non-trivial norms and biases
            nn.init.normal_(p, 0.0, 0.5)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        for b in self.blocks:
            t = b(t)
        return t


def _ln_lrp(x, ln, r):
    """LRP-0 through LayerNorm with its standard deviation constant: y = diag(g / sd) (I - 1/n) x + b."""
    n = x.shape[-1]
    sd = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)
    y = (x - x.mean(-1, keepdim=True)) / sd * ln.weight + ln.bias
    s = r / y * ln.weight / sd  # (T, n): J^T (R / y), J = diag(g / sd) C with C = I - 11^T / n symmetric
    return x * (s - s.sum(-1, keepdim=True) / n)


def _linear_lrp(x, w, b, r):
    y = x @ w.T + b
    return x * ((r / y) @ w)


def _explicit_block_lrp(block: _Block, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
    """LRP-0 through one block for one sample x (T, d), written out: residual sums by the z rule, linear layers by
    LRP-0 (biases absorb), GELU by the identity rule, attention weights constant (CP-LRP)."""
    d, heads = x.shape[-1], block.attn.num_heads
    h = F.layer_norm(x, (d,), block.ln1.weight, block.ln1.bias, block.ln1.eps)
    wq, wk, wv = block.attn.in_proj_weight.chunk(3)
    bq, bk, bv = block.attn.in_proj_bias.chunk(3)
    q, k, v = h @ wq.T + bq, h @ wk.T + bk, h @ wv.T + bv
    dh = d // heads
    o = torch.zeros_like(v)
    weights = []
    for i in range(heads):
        sl = slice(i * dh, (i + 1) * dh)
        a = torch.softmax(q[:, sl] @ k[:, sl].T / dh ** 0.5, -1)
        weights.append(a)
        o[:, sl] = a @ v[:, sl]
    att = o @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    x1 = x + att
    h2 = F.layer_norm(x1, (d,), block.ln2.weight, block.ln2.bias, block.ln2.eps)
    lin1, lin2 = block.mlp[0], block.mlp[2]
    u = h2 @ lin1.weight.T + lin1.bias
    g = F.gelu(u)
    m = g @ lin2.weight.T + lin2.bias
    x2 = x1 + m
    # backwards
    r_x1 = x1 * r_out / x2
    r_m = m * r_out / x2
    r_u = _linear_lrp(g, lin2.weight, lin2.bias, r_m)  # = R_g, passed through GELU unchanged
    r_h2 = _linear_lrp(h2, lin1.weight, lin1.bias, r_u)
    r_x1 = r_x1 + _ln_lrp(x1, block.ln2, r_h2)
    r_x = x * r_x1 / x1
    r_att = att * r_x1 / x1
    r_o = _linear_lrp(o, block.attn.out_proj.weight, block.attn.out_proj.bias, r_att)
    r_v = torch.zeros_like(v)
    for i, a in enumerate(weights):
        sl = slice(i * dh, (i + 1) * dh)
        r_v[:, sl] = v[:, sl] * (a.T @ (r_o[:, sl] / o[:, sl]))
    r_h = _linear_lrp(h, wv, bv, r_v)
    return r_x + _ln_lrp(x, block.ln1, r_h)


def test_transformer_relevance_agrees_with_an_explicit_lrp():
    torch.manual_seed(1)
    toy = _Toy().double().eval()
    for p in toy.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    channels = torch.tensor([3, 6])
    engine = ModifiedGradientRelevance(toy, "blocks.1", ["blocks.0", "blocks.1"], "lrp", signed=True)
    got = engine(x, channels, lambda *a: None)
    feats = FeatureExtractor(toy, ["blocks.0", "blocks.1"], view="raw")(x)
    for b in range(2):
        out = feats["blocks.1"][b]
        r_out = torch.zeros_like(out)
        r_out[:, channels[b]] = out[:, channels[b]].clamp(min=0)
        want = _explicit_block_lrp(toy.blocks[1], feats["blocks.0"][b], r_out)
        torch.testing.assert_close(got["blocks.0"][b], want, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(got["blocks.1"][b], r_out)
    positive = RelevanceEngine(toy, "blocks.1", ["blocks.0"])(x, channels)["blocks.0"]
    assert positive.min() >= 0 and torch.allclose(positive, got["blocks.0"].clamp(min=0))


def _without_biases(m: nn.Module) -> nn.Module:
    for name, p in m.named_parameters():
        if name.endswith("bias") or "pos_embedding" in name or "class_token" in name:
            p.zero_()
    return m


@pytest.mark.parametrize("name,kw,size,layers", [
    ("vit_b_16", {"image_size": 32}, 32, [f"encoder.layers.encoder_layer_{i}" for i in (5, 4, 3, 2)]),
    ("swin_t", {}, 64, ["features.5", "features.4", "features.3", "features.2", "features.1"]),
    ("convnext_tiny", {}, 64, ["features.5", "features.4", "features.3", "features.2", "features.1"]),
])
def test_relevance_is_conserved_block_by_block_where_no_bias_absorbs_it(name, kw, size, layers):
    """With biases (and ViT's constant embeddings) zeroed the rules are exactly conservative: every block passes
    on all the relevance it receives, up to the z+ stabiliser of ConvNeXt's depthwise convolutions. With biases,
    the loss is the biases' share (bench/relevance_conservation.py)."""
    m = _without_biases(_random(name, **kw)).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    engine = ModifiedGradientRelevance(m, layers[0], layers, "lrp", signed=True)
    rel = engine(x, torch.tensor([1, 7]), lambda *a: None)
    sums = torch.stack([rel[n].flatten(1).sum(1) for n in layers])  # (layers, B)
    assert (sums[0] > 0).all()
    torch.testing.assert_close(sums / sums[0], torch.ones_like(sums), rtol=0, atol=1e-4)


# ---- end to end -------------------------------------------------------------------------------------------------

CASES = {
    "vit_b_16": ({"image_size": 48}, 48, "encoder.layers.encoder_layer_6", ["conv_proj", "encoder.layers.encoder_layer_6"], 700),
    "swin_t": ({}, 64, "features.3", ["features.1", "features.3"], 150),
    "convnext_tiny": ({}, 64, "features.3", ["features.1", "features.3"], 150),
    "regnet_y_400mf": ({}, 64, "trunk_output.block2", ["trunk_output.block2"], 100),
    "vgg11": ({}, 64, "features.9", ["features.4", "features.9"], 200),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("photos")
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("name", list(CASES))
def test_class_mine_and_neuron_end_to_end(name, photos, tmp_path):
    kw, size, target, mined, channel = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(_random(name, **kw), size=size, name=name)
        refs = from_images([Image.open(p) for p in sorted(photos.iterdir())[:2]])
        res = vital.visualize(model, [vital.Class(1)], [refs], steps=2, warmup=1, progress=False)
        assert torch.isfinite(res.history).all()
        store = mine(model, mined, photos, k=3, out=tmp_path / "store", progress=False)
        channels = {n: store.index["layers"][n]["channels"] for n in mined}
        rows = {r.name: r for r in layer_table(model.module, torch.zeros(1, 3, size, size))}
        assert channels == {n: rows[n].channels for n in mined}
        with pytest.raises(VitalError, match=f"has {rows[target].channels} channels"):
            vital.visualize(model, [vital.Channel(target, rows[target].channels)], [refs], steps=1, progress=False)
        guided = name in ("regnet_y_400mf", "vgg11")
        for relevance in ["lrp", "lrp-restricted", *(["guided-backprop"] if guided else []), "none"]:
            res = vital.visualize(model, [vital.Channel(target, channel)], [store.references(target, 3)], steps=2,
                                  warmup=1, relevance=relevance, progress=False)
            assert torch.isfinite(res.history).all(), relevance
        if not guided:
            with pytest.raises(VitalError, match="needs a ReLU network"):
                vital.visualize(model, [vital.Channel(target, channel)], [refs], steps=1, relevance="guided-backprop",
                                progress=False)

import pytest
import torch
import torchvision
from torch import nn

from vital.errors import VitalError
from vital.features import FeatureExtractor, as_channels_by_positions, layer_table


def test_shapes_channels_by_positions(tiny_model):
    fx = FeatureExtractor(tiny_model.module, ["stem", "stage2"])
    out = fx(torch.randn(2, 3, 32, 32))
    assert out["stem"].shape == (2, 8, 16 * 16)
    assert out["stage2"].shape == (2, 16, 8 * 8)
    direct = tiny_model.module.stem(torch.zeros(1, 3, 32, 32))
    assert torch.equal(fx(torch.zeros(1, 3, 32, 32))["stem"], direct.flatten(2))


def test_stops_after_the_deepest_layer(tiny_model):
    calls = []
    tiny_model.module.fc.register_forward_hook(lambda *a: calls.append("fc"))
    FeatureExtractor(tiny_model.module, ["stage1"])(torch.randn(1, 3, 32, 32))
    assert calls == []


def test_vit_tokens_are_channels_by_tokens():
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32).eval()
    fx = FeatureExtractor(vit, ["conv_proj", "encoder.layers.encoder_layer_1"])
    out = fx(torch.randn(2, 3, 32, 32))
    assert out["conv_proj"].shape == (2, 16, 16)  # 16 dims x 4x4 patches
    assert out["encoder.layers.encoder_layer_1"].shape == (2, 16, 17)  # 16 dims x (16 patches + CLS)
    tokens = torch.randn(2, 17, 16)
    assert torch.equal(as_channels_by_positions(tokens)[:, 3, 5], tokens[:, 5, 3])


def test_unknown_layer_names_closest(tiny_model):
    with pytest.raises(VitalError, match="Closest: stage1"):
        FeatureExtractor(tiny_model.module, ["stage_1"])


def test_layer_not_run_is_an_error():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.unused = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(VitalError, match="did not run"):
        FeatureExtractor(Skips(), ["unused"])(torch.randn(1, 3, 4, 4))


def test_layer_table_lists_shapes_in_execution_order(tiny_model):
    rows = layer_table(tiny_model.module, torch.zeros(1, 3, 32, 32))
    names = [r[0] for r in rows]
    assert names.index("stem") < names.index("stage1") < names.index("fc")
    assert {r.name: r.shape for r in rows}["stage2"] == (1, 16, 8, 8)

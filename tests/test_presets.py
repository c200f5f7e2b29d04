import pytest
import torch
import torchvision

from vital.models.presets import PRESETS, preset_for, stage_ends


def _meta_model(name: str):
    with torch.device("meta"):
        return torchvision.models.get_model(name, weights=None)


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "convnext_base", "vit_l_16", "vit_l_32", "vit_b_16",
                                  "vit_b_32", "mobilenet_v2"])
def test_every_preset_layer_exists(name):
    modules = dict(_meta_model(name).named_modules())
    preset = PRESETS[name]
    assert all(layer in modules for layer in preset.layers)
    assert len(preset.layer_weights) == len(preset.layers)


def test_paper_rows_match_spec():
    assert PRESETS["resnet50"].layers == ("conv1", "layer1", "layer2", "layer3", "layer4")
    assert PRESETS["densenet121"].layer_weights == (1, 1, 1, 1, 100)
    assert PRESETS["convnext_base"].layer_weights[0] == 10
    assert (PRESETS["vit_l_16"].tv_l2, PRESETS["vit_l_16"].l2) == (3e-3, 3e-3)
    assert PRESETS["vit_l_32"].layer_weights[-1] == 0.1 and PRESETS["vit_l_32"].tv_l2 == 3e-4
    assert PRESETS["vit_l_16"].layers[1] == "encoder.layers.encoder_layer_2"


def test_generic_rule_stem_and_stage_ends():
    resnet18 = torchvision.models.resnet18(weights=None).eval()
    assert stage_ends(resnet18, 64) == ["conv1", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    vgg = torchvision.models.vgg11(weights=None).eval()
    ends = stage_ends(vgg, 64)
    # stem, then the last module at each resolution 32, 16, 8, 4, 2; the 7x7 adaptive pool is not a stage, nor is
    # features.1, the stem's own output changed in place by ReLU(inplace=True): it would match the stem twice
    assert ends == ["features.0", "features.4", "features.9", "features.14", "features.19", "features.20"]


def test_lite_preset_derived_from_the_model(lite0):
    p = preset_for(lite0.module)
    assert p.layers == ("_conv_stem", "_blocks.0", "_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15")
    assert p.layer_weights == (1.0,) * 6


def test_unknown_model_gets_generic_preset(tiny_model):
    p = preset_for(tiny_model.module, 32)
    assert p.layers[0] == "stem" and p.source == "generic" and p.tv_l2 == 0

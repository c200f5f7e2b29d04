import pytest
import torch

from vital.errors import VitalError
from vital.models import load_model
from vital.models.zoo import available_models


def test_lite0_is_a_real_imagenet_classifier(lite0):
    assert lite0.weights_id.startswith("efficientnet-lite0") and lite0.size == 224
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.interpolation == "bicubic"
    assert lite0.class_name(967) == "espresso" and lite0.num_classes == 1000
    assert not lite0.module.training
    assert all(not p.requires_grad for p in lite0.module.parameters())


def test_torchvision_random_only_when_asked():
    vm = load_model("resnet18", weights=None)
    assert vm.weights_id == "random (seed 0)" and vm.size == 224 and vm.num_classes == 1000


def test_missing_torchvision_weights_name_the_file(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(VitalError, match=r"resnet18-f37072fd\.pth.*--weights none"):
            load_model("resnet18")
    finally:
        torch.hub.set_dir(old)


def test_weights_from_a_file(tmp_path):
    src = load_model("resnet18", weights=None)
    path = tmp_path / "r18.pth"
    torch.save(src.module.state_dict(), path)
    vm = load_model("resnet18", weights=str(path))
    assert vm.weights_id == "r18.pth"
    assert torch.equal(vm.module.conv1.weight, src.module.conv1.weight)


def test_unknown_model_suggests_names():
    with pytest.raises(VitalError, match="Closest: resnet50"):
        load_model("resnet5O")


def test_wrap_module_with_preprocessing(tiny_model):
    x01 = torch.rand(1, 3, 4, 4)
    assert torch.allclose(tiny_model.denormalize(tiny_model.normalize(x01)), x01, atol=1e-6)
    lo, hi = tiny_model.pixel_bounds(x01)
    assert torch.allclose(lo.flatten(), torch.full((3,), -2.0)) and torch.allclose(hi.flatten(), torch.full((3,), 2.0))


def test_available_models_reports_disk_state():
    rows = {r.name: r for r in available_models()}
    assert rows["efficientnet_lite0"].weights_on_disk
    assert "resnet50" in rows and "vit_l_16" in rows and "fasterrcnn_resnet50_fpn" not in rows


def test_a_named_model_takes_the_size_it_is_given():
    """`size` reaches a named model (it was ignored before: benches asked for 128 px and ran at 224), with the
    model's own crop proportion; without it the model keeps its own."""
    small = load_model("resnet18", weights=None, size=128)
    assert (small.size, small.resize) == (128, 146)  # 256 * 128 / 224, rounded
    transform = small.transform()
    from PIL import Image

    assert transform(Image.new("RGB", (300, 200))).shape == (3, 128, 128)
    assert (load_model("resnet18", weights=None).size, load_model("resnet18", weights=None, resize=300).resize) == (
        224, 300)

"""The one capture-with-early-stop helper (`vital.features.capture`), `Readout.from_targets`, and the activation
objective reading each layer's layout once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vital.features as features
from vital.errors import VitalError
from vital.features import capture
from vital.models import load_model
from vital.objectives.activation import Activation
from vital.objectives.base import Views
from vital.relevance.readout import Readout
from vital.targets import Channel, Class, Direction


class Counting(nn.Module):
    """Counts its calls: whether the forward reached it."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x + 1


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 1), Counting())


def test_the_forward_stops_after_the_last_layer_or_after_until():
    net = _net()
    x = torch.randn(1, 3, 6, 6)
    got = capture(net, x, {"0": net[0]})
    assert list(got) == ["0"] and net[3].calls == 0
    torch.testing.assert_close(got["0"], net[0](x))
    got = capture(net, x, {"0": net[0]}, until=("2", net[2]))
    assert list(got) == ["0", "2"] and net[3].calls == 0
    capture(net, x, {"0": net[0]}, stop_early=False)
    assert net[3].calls == 1


def test_a_copy_protects_a_captured_output_from_a_later_in_place_op():
    net = _net()
    x = torch.randn(1, 3, 6, 6)
    want = net[0](x)
    assert (want < 0).any()
    kept = capture(net, x, {"0": net[0], "2": net[2]}, copy=True)["0"]
    torch.testing.assert_close(kept, want)
    overwritten = capture(net, x, {"0": net[0], "2": net[2]}, copy=False)["0"]
    assert (overwritten >= 0).all()  # the ReLU(inplace=True) wrote into it


def test_first_use_of_a_shared_module_and_prepare():
    relu = nn.ReLU()

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = relu

        def forward(self, x):
            return self.relu(self.relu(x) - 1)

    x = torch.tensor([[2.0, 0.5]])
    got = capture(Twice(), x, {"relu": relu}, stop_early=False)
    torch.testing.assert_close(got["relu"], torch.tensor([[2.0, 0.5]]))
    made = capture(Twice(), x, {"relu": relu}, prepare=lambda t: t.detach().requires_grad_(True))
    assert made["relu"].requires_grad and made["relu"].is_leaf


def test_a_tuple_output_is_read_as_its_first_element_only_when_asked():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            a, b = self.pair(x)
            return a + b

    net, x = Net(), torch.ones(1, 2)
    got = capture(net, x, {"pair": net.pair}, first_of_sequence=True, copy=True, stop_early=False)
    torch.testing.assert_close(got["pair"], 2 * x)
    with pytest.raises(VitalError, match="returns tuple, not a tensor"):
        capture(net, x, {"pair": net.pair})


def test_readout_from_targets():
    units = Readout.from_targets([Channel("a", 3), Channel("a", 1, (2, 5))])
    assert units.channels.tolist() == [3, 1] and units.positions.tolist() == [[-1, -1], [2, 5]]
    assert Readout.from_targets([Channel("a", 3)]).positions is None
    d = Readout.from_targets([Direction("a", (1.0, 2.0)), Direction("a", (0.0, -1.0))], dtype=torch.float64)
    assert d.vectors.dtype == torch.float64 and d.vectors.tolist() == [[1.0, 2.0], [0.0, -1.0]] and d.channels is None
    with pytest.raises(VitalError, match="only Channel or only Direction"):
        Readout.from_targets([Channel("a", 3), Direction("a", (1.0,))])
    with pytest.raises(VitalError, match="only Channel or only Direction"):
        Readout.from_targets([Class(3)])


def test_the_activation_objective_reads_each_layout_once(monkeypatch):
    """A 5-channel map at 5x5 cannot tell its layout by shape: probed once, at the first step, not every step."""
    calls = []
    original = features.LayoutProbe.layout.__func__

    def counted(cls, *args):
        calls.append(args[1])
        return original(cls, *args)

    monkeypatch.setattr(features.LayoutProbe, "layout", classmethod(counted))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = load_model(net, size=5, name="five")
    term = Activation(model, [Channel("1", 2), Channel("1", 4, (1, 3))])
    x = torch.rand(2, 3, 5, 5)
    first = term(Views.of(x))
    second = term(Views.of(x))
    assert calls.count("1") == 1 and torch.equal(first, second)
    with torch.no_grad():
        a = net[:2](x)
    torch.testing.assert_close(first, torch.stack([-a[0, 2].mean(), -a[1, 4, 1, 3]]))
    with pytest.raises(VitalError, match="channel 5 is out of range for layer '1'"):
        Activation(model, [Channel("1", 5)])(Views.of(x[:1]))

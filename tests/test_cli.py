import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vital.cli import main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vital.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def class_root(tmp_path):
    root = tmp_path / "train"
    rng = np.random.default_rng(0)
    for k in range(3):
        (root / f"n0000000{k}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / f"n0000000{k}" / f"{i}.png")
    return root


@pytest.mark.parametrize("args, message", [
    (["class", "-m", "resnet5", "-c", "1", "--refs", "x", "--out", "{tmp}/o"], "unknown model 'resnet5'"),
    (["class", "-m", "efficientnet_lite0", "-c", "1", "--refs", "{tmp}/nope", "--out", "{tmp}/o"], "does not exist"),
    (["class", "-m", "efficientnet_lite0", "-c", "7", "--refs", "{root}", "--out", "{tmp}/o"], "class 7 is out of range"),
    (["class", "-m", "resnet18", "-c", "1", "--refs", "{root}", "--out", "{tmp}/o"], "--weights none"),
    (["class", "-m", "efficientnet_lite0", "-c", "1", "--refs", "{root}", "--out", "/proc/forbidden"], "choose another --out"),
    (["class", "-m", "efficientnet_lite0", "-c", "1", "--refs", "{root}", "--out", "{tmp}/o", "--layers", "_blocks.99"],
     "no layer '_blocks.99'"),
    (["layers", "resnet5"], "Closest: resnet50"),
])
def test_errors_are_one_line_and_exit_2(args, message, tmp_path, class_root, capsys):
    args = [a.format(tmp=tmp_path, root=class_root) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_class_command_batches_classes(tmp_path, class_root):
    out = tmp_path / "run"
    proc = _run("class", "-m", "efficientnet_lite0", "-c", "0,2", "--refs", str(class_root), "-n", "2",
                "--steps", "2", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (out / "class0000.png").is_file() and (out / "class0002_transparency.png").is_file()
    rec = json.loads((out / "record.json").read_text())
    assert [t["index"] for t in rec["targets"]] == [0, 2] and rec["model"]["weights"].startswith("efficientnet-lite0")
    assert len(rec["references"][1]["files"]) == 2
    assert "contact sheet" in proc.stdout


def test_layers_and_models(capsys):
    assert main(["layers", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "layer4.1" in out and "(1, 512, 7, 7)" in out
    assert main(["models"]) == 0
    assert "efficientnet_lite0  weights on disk: yes" in capsys.readouterr().out


def test_channels_parse_in_layer_colon_channel_form():
    from vital.errors import VitalError
    from vital.targets import Channel, parse_channels

    assert parse_channels("_blocks.10:5") == [Channel("_blocks.10", 5)]
    assert parse_channels("layer4.2:0-2,7") == [Channel("layer4.2", c) for c in (0, 1, 2, 7)]
    assert parse_channels("3,4", layer="stem") == [Channel("stem", 3), Channel("stem", 4)]
    assert parse_channels("a.b:1", layer="stem") == [Channel("a.b", 1)]  # the explicit layer wins
    for bad, message in (("5", "has no layer"), (":5", "as layer:channel"), ("stem:", "no channel"),
                         ("stem:x", "cannot read 'x'")):
        with pytest.raises(VitalError, match=message):
            parse_channels(bad)


@pytest.mark.integration
def test_neuron_command_takes_layer_colon_channel_targets(tmp_path, class_root, capsys):
    refs = class_root / "n00000000"
    common = ["-m", "efficientnet_lite0", "--refs", str(refs), "-n", "2", "--steps", "1", "--relevance", "none", "-q"]
    assert main(["neuron", "--channel", "_blocks.10:5", "--channel", "_blocks.10:7", *common,
                 "--out", str(tmp_path / "colon")]) == 0
    assert main(["neuron", "--layer", "_blocks.10", "--channel", "5,7", *common, "--out", str(tmp_path / "flag")]) == 0
    rec = json.loads((tmp_path / "colon" / "record.json").read_text())
    assert [(t["layer"], t["channel"]) for t in rec["targets"]] == [("_blocks.10", 5), ("_blocks.10", 7)]
    for name in ("_blocks_10_ch0005.png", "_blocks_10_ch0007.png"):
        assert (tmp_path / "colon" / name).read_bytes() == (tmp_path / "flag" / name).read_bytes()
    capsys.readouterr()
    assert main(["neuron", "--channel", "5", *common, "--out", str(tmp_path / "bare")]) == 2
    assert "has no layer" in capsys.readouterr().err


@pytest.mark.integration
def test_neuron_command_passes_the_channel_options_and_refuses_them_for_a_baseline(tmp_path, class_root, capsys):
    refs = class_root / "n00000000"
    common = ["-m", "efficientnet_lite0", "--refs", str(refs), "-n", "2", "--steps", "1", "-q", "-c", "_blocks.4:3"]
    assert main(["neuron", *common, "--mask", "multiply", "--target-weight", "0.5", "--unweighted", "0",
                 "--param", "pixel", "--relevance", "lrp-restricted", "--out", str(tmp_path / "a")]) == 0
    rec = json.loads((tmp_path / "a" / "record.json").read_text())
    assert {k: rec["options"][k] for k in ("mask", "target_weight", "unweighted", "param", "relevance")} == {
        "mask": "multiply", "target_weight": 0.5, "unweighted": 0.0, "param": "pixel", "relevance": "lrp-restricted"}
    assert rec["parameterization"]["name"] == "pixel"
    capsys.readouterr()
    assert main(["neuron", *common, "--method", "fourier", "--mask", "multiply", "--out", str(tmp_path / "b")]) == 2
    assert "method 'fourier' has no option(s) ['mask']" in capsys.readouterr().err
    assert main(["neuron", *common, "--method", "fourier", "--out", str(tmp_path / "c")]) == 0  # defaults pass

"""Agreement of vital's modified-gradient relevance with lxt's CP-LRP on torchvision's ViT (random weights).

lxt ("LRP eXplains Transformers", Achtibat et al.) implements the same published rules by patching the classes of
torchvision's vision_transformer module (GELU, LayerNorm, MultiheadAttention); vital applies them with a
TorchFunctionMode and never patches anything. lxt is not a dependency of vital: it pulls transformers, accelerate
and bitsandbytes and patches classes globally, so this comparison runs in its own process with lxt importable,
e.g. `pip install --target /tmp/lxtpkgs --no-deps lxt "transformers<5" "tokenizers<=0.23.0"
"huggingface-hub<1" accelerate tabulate` (lxt 2.1 imports transformers 4 modules at import time) and
`PYTHONPATH=/tmp/lxtpkgs python bench/lxt_agreement.py`. It prints the largest relative difference per layer.
"""

from __future__ import annotations

import torch
import torchvision
from torchvision.models import vision_transformer

from vital.relevance.modified_gradient import ModifiedGradientRelevance

TARGET = "encoder.layers.encoder_layer_7"
LAYERS = [f"encoder.layers.encoder_layer_{i}" for i in (6, 4, 2, 0)]


def lxt_relevance(model, x: torch.Tensor, channels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradient x input at LAYERS of the lxt-patched model, started from the target channel's positive part."""
    modules = dict(model.named_modules())
    outs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_m, _i, out):
            outs[name] = out
        return hook

    handles = [modules[n].register_forward_hook(keep(n)) for n in [*LAYERS, TARGET]]
    x = x.clone().requires_grad_(True)  # so that the graph reaches every layer
    model(x)
    for h in handles:
        h.remove()
    a = outs[TARGET]
    start = torch.zeros_like(a)
    for b, c in enumerate(channels.tolist()):
        start[b, :, c] = (a[b, :, c] > 0).to(a.dtype)
    grads = torch.autograd.grad(a, [outs[n] for n in LAYERS], start)
    return {n: (outs[n] * g).detach() for n, g in zip(LAYERS, grads, strict=True)}


def main() -> None:
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=64).double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    channels = torch.tensor([5, 300, 700])
    ours = ModifiedGradientRelevance(model, TARGET, LAYERS, "lrp", signed=True)(x, channels, lambda *a: None)
    from lxt.efficient import monkey_patch
    from lxt.efficient.models.vit_torch import cp_LRP

    monkey_patch(vision_transformer, cp_LRP)
    theirs = lxt_relevance(model, x, channels)
    print("| layer | relevance sum (vital) | relevance sum (lxt) | max relative difference |")
    print("|---|---|---|---|")
    for n in LAYERS:
        diff = ((ours[n] - theirs[n]).abs().max() / theirs[n].abs().max()).item()
        print(f"| {n} | {ours[n].sum().item():.4f} | {theirs[n].sum().item():.4f} | {diff:.2e} |")


if __name__ == "__main__":
    main()

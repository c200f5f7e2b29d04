"""What every objective the loop calls has in common: terms that give one loss per image and compose.

A `Term` maps the images of one step to a per-image loss (B,); lower is better. Terms add (`a + b`) and scale
(`0.1 * a`), as Lucid's objectives do, so a recipe is a sum such as `priors + alignment` or
`priors + activation + 0.01 * batchnorm`. A term that needs the reference side computes it in `prepare`, once per
resolution, before the steps of a stage run. A term that attaches to the model (hooks) does so in `__enter__` and
detaches in `__exit__`; a sum enters and leaves all of its terms, so `with objective:` leaves the model as it was,
after an exception too.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Views:
    """The images of one step. `image` (B, 3, H, W): what the network sees after jitter and flip, on which the
    priors are computed. `views` (B * n_views, 3, h, w): what feature and activation terms see, sample-major (rows
    b * n_views ... (b+1) * n_views - 1 come from image b); it is `image` itself when the recipe adds no
    augmentation."""

    image: torch.Tensor
    views: torch.Tensor

    @classmethod
    def of(cls, image: torch.Tensor) -> Views:
        return cls(image, image)

    @property
    def batch(self) -> int:
        return self.image.shape[0]

    @property
    def n_views(self) -> int:
        return self.views.shape[0] // self.image.shape[0]

    def per_image(self, loss: torch.Tensor) -> torch.Tensor:
        """A per-view loss (B * n_views,) averaged back to one per image (B,)."""
        return loss.view(self.batch, self.n_views).mean(1)


class Term:
    """A loss term: `term(views)` is a (B,) tensor. Subclasses override `__call__` and, where needed, `prepare`,
    `state`, `attach` and `detach`."""

    name = "term"

    def prepare(self, downsample: int) -> None:  # noqa: B027  (most terms have no reference side)
        """Reference-side work for the resolution the network sees (the input size // downsample), under no_grad."""

    def __call__(self, v: Views) -> torch.Tensor:
        raise NotImplementedError

    def state(self) -> dict:
        """Hyperparameters for the run record."""
        return {"name": self.name}

    def attach(self) -> None:  # noqa: B027
        """Install what the term needs on the model (hooks); undone by `detach`."""

    def detach(self) -> None:  # noqa: B027
        """Undo `attach`: the model is left exactly as it was."""

    def __enter__(self) -> Term:
        self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def __add__(self, other: Term) -> Sum:
        return Sum([*_parts(self), *_parts(other)])

    def __mul__(self, weight: float) -> Scaled:
        return Scaled(self, weight)

    __rmul__ = __mul__


def _parts(t: Term) -> list[Term]:
    return list(t.terms) if isinstance(t, Sum) else [t]


class Sum(Term):
    """The sum of terms, added in order (a fixed order keeps a seed's image bit-identical)."""

    name = "sum"

    def __init__(self, terms: list[Term]):
        self.terms = terms
        self._stack: ExitStack | None = None

    def prepare(self, downsample: int) -> None:
        for t in self.terms:
            t.prepare(downsample)

    def __call__(self, v: Views) -> torch.Tensor:
        total = torch.zeros(v.batch, device=v.image.device, dtype=v.image.dtype)
        for t in self.terms:
            total = total + t(v)
        return total

    def state(self) -> dict:
        return {"name": "sum", "terms": [t.state() for t in self.terms]}

    def attach(self) -> None:
        with ExitStack() as stack:
            for t in self.terms:
                stack.enter_context(t)
            self._stack = stack.pop_all()  # every term entered: keep them until detach

    def detach(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


class Scaled(Term):
    """weight * term."""

    name = "scaled"

    def __init__(self, term: Term, weight: float):
        self.term, self.weight = term, float(weight)

    def prepare(self, downsample: int) -> None:
        self.term.prepare(downsample)

    def __call__(self, v: Views) -> torch.Tensor:
        return self.weight * self.term(v)

    def state(self) -> dict:
        return {**self.term.state(), "weight": self.weight}

    def attach(self) -> None:
        self.term.attach()

    def detach(self) -> None:
        self.term.detach()

"""The contract between generative methods and the training engine.

A *method* (DCGAN, ACGAN, LAPGAN, pix2pix, SPADE, Red-GAN, ...) is a :class:`GANMethod`:
it owns its networks and optimisers and knows how to do one training iteration and how to
generate. The engine (:mod:`medbalance.training.engine`) owns everything else: data loading,
device and precision, distributed gradient averaging, EMA, checkpoints, samples, logging.

Batches are dicts from :class:`medbalance.data.ImageDataset`:
``image`` (B,C,H,W) float32 in [-1, 1], ``label`` (B,) int64, and when the dataset has them
``mask`` (B,H,W) int64 (indices into ``info.mask_values``) and ``condition`` (B,) int64.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from medbalance.data.dataset import DataInfo


class GANMethod(nn.Module):
    """Base class of every generative method.

    Subclasses set :attr:`name`, :attr:`needs` (which batch keys it conditions on:
    any of ``"label"``, ``"mask"``, ``"condition"``), build their networks in ``__init__`` and
    implement :meth:`configure_optimizers`, :meth:`training_step` and :meth:`generate`.

    ``networks()`` names the modules saved in checkpoints (``G`` is the one EMA tracks and
    sampling uses). ``training_step`` performs its own alternating updates through
    :meth:`optimize`, which applies the engine's gradient scaler and distributed gradient
    averaging, so a method never needs to know whether it runs on 1 or N processes.
    """

    name: ClassVar[str] = "base"
    needs: ClassVar[tuple[str, ...]] = ()  # subset of ("label", "mask", "condition")
    # trains faster in the channels-last (NHWC) layout: what train.channels_last null (the default) picks for 2D data.
    # Set where bench_train.py --nhwc measured a gain on the CPU (docs/performance.md); off where it did not.
    channels_last: ClassVar[bool] = False
    # the parameter that ends a first training phase of another speed (its first N steps train something else), or
    # None: timed per phase where a step count is planned from a speed (medbalance benchmark --estimate / --budget)
    phase_param: ClassVar[str | None] = None

    def __init__(self, params: Any, info: DataInfo):
        super().__init__()
        self.params = params
        self.info = info
        # Set by the engine; defaults make a method usable stand-alone (tests, notebooks).
        self.autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        self.grad_sync: Callable[[nn.Module], None] = lambda module: None
        self.scaler: torch.amp.GradScaler | None = None
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self._opt_modules: dict[str, nn.Module] = {}

    # ------------------------------------------------------------------ to implement
    def networks(self) -> dict[str, nn.Module]:
        """Named networks saved in checkpoints; must contain ``"G"``."""
        raise NotImplementedError

    def configure_optimizers(self) -> dict[str, tuple[torch.optim.Optimizer, nn.Module]]:
        """Return ``{name: (optimizer, module_it_updates)}``."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """One iteration (all its G/D updates). Returns detached scalar losses to log."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        masks: torch.Tensor | None = None,
        conditions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        G: nn.Module | None = None,
    ) -> torch.Tensor:
        """Images in [-1, 1], shape (B, C, *spatial), for the given classes (and masks/conditions).

        ``G`` replaces the generator network (the engine passes the EMA copy). ``generator``
        seeds the noise so that generation is reproducible.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def setup_optimizers(self) -> None:
        opts = self.configure_optimizers()
        self.optimizers = {k: v[0] for k, v in opts.items()}
        self._opt_modules = {k: v[1] for k, v in opts.items()}

    def optimize(self, name: str, loss: torch.Tensor) -> None:
        """zero_grad -> backward -> (distributed) gradient average -> step, for optimizer ``name``."""
        opt = self.optimizers[name]
        module = self._opt_modules[name]
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.grad_sync(module)
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            self.grad_sync(module)
            opt.step()

    def describe(self) -> dict[str, Any]:
        """Parameter counts per network (for model cards and logs)."""
        return {k: sum(p.numel() for p in m.parameters()) for k, m in self.networks().items()}


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)

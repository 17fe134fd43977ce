"""Seeding: :func:`seed_everything` and the named seed streams.

Every random stream the toolkit derives from a user seed has a name in :data:`SEED_STREAMS`. The stream's salt
(a fixed integer) is mixed with the base seed and the stream's counters (epoch, step, rank, ...) by
:func:`derive_seed`, so two streams never share numbers and a stream is a pure function of its inputs (a resumed
run reads the same data order, flips and noise). The salts are part of the saved-run contract: changing one changes
the results of every run that uses it.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from medbalance.errors import ConfigError

# name -> salt. Never change a value (results of saved runs depend on them); add new names with new values.
SEED_STREAMS: dict[str, int] = {
    "data_order": 0xDA7A,  # uniform permutation of the training set per epoch (engine)
    "class_balanced_order": 0xBA1A,  # class-balanced draws per epoch (engine)
    "flip": 0xF11B,  # left-right flips of each global batch (engine, train.flip)
    "train_noise": 0x7EA1,  # the global torch RNG of a training process (per rank; after a resize also per step)
    "sample_grid_inputs": 0x5A3E,  # which real masks/conditions the sample grids use
    "sample_grid_noise": 0xF1ED,  # the noise of the sample grids
    "generator_heldout_split": 0x5B117,  # the generator's training / held-out split (train.val_fraction)
    "generation": 0x6E4E,  # noise of batch i of LoadedRun.generate
}


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (numpy SeedSequence: well mixed, order sensitive)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def stream_seed(base: int, stream: str, *counters: int) -> int:
    """The seed of stream ``stream`` (a name of :data:`SEED_STREAMS`) for ``base`` and its counters."""
    try:
        salt = SEED_STREAMS[stream]
    except KeyError:
        raise ConfigError(f"unknown seed stream {stream!r}; known: {', '.join(SEED_STREAMS)}") from None
    return derive_seed(base, salt, *counters)


def stream_generator(base: int, stream: str, *counters: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`stream_seed`."""
    g = torch.Generator()
    g.manual_seed(stream_seed(base, stream, *counters))
    return g


def synthesis_batch_seed(random_state: int, cls: int, counter: int) -> int:
    """The seed of generated batch ``counter`` of class ``cls`` (:class:`~medbalance.synthesis.oversampler.
    GenerativeOverSampler`): a 32-bit SeedSequence of (random_state, class, batch number). It predates the salted
    streams and keeps its formula so that exported synthetic sets stay the same."""
    return int(np.random.SeedSequence([int(random_state), int(cls), int(counter)]).generate_state(1)[0])


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    g = torch.Generator()
    g.manual_seed(seed)
    return g

"""Seeding and the RNG states a checkpoint carries, so that a resumed run draws the same numbers.

paddle's generator state is a C++ object; its pickled form is a plain tuple, which is what we store
(the safe checkpoint loader accepts plain Python data, not arbitrary classes)."""
import random

import numpy as np

from ppmerge.runtime import import_paddle


def seed_everything(seed):
    """paddle, numpy and Python's random from one seed (the sampler is seeded separately)."""
    paddle = import_paddle()
    paddle.seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def get_rng_states():
    """Plain-data snapshot of every RNG the training step can draw from."""
    paddle = import_paddle()
    np_state = np.random.get_state()
    return {
        "paddle": [list(state.__getstate__()) for state in paddle.get_rng_state()],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": _to_lists(random.getstate()),
    }


def set_rng_states(states):
    paddle = import_paddle()
    state_type = type(paddle.get_rng_state()[0])
    restored = []
    for saved in states["paddle"]:
        state = state_type.__new__(state_type)
        state.__setstate__(tuple(saved))
        restored.append(state)
    paddle.set_rng_state(restored)
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(_to_tuples(states["python"]))


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, (tuple, list)) else value

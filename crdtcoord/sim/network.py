"""Network models for the simulator: latency distributions, loss, duplication, reordering."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from crdtcoord._exceptions import InvalidArgument

__all__ = ["Constant", "Latency", "LinkConfig", "LogNormal", "NetworkConfig", "Uniform"]


class Latency:
    """A one-way latency distribution (seconds); sampled with the simulation's seeded RNG."""

    def sample(self, rng: random.Random) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Latency):
    seconds: float = 0.001

    def sample(self, rng: random.Random) -> float:
        return self.seconds


@dataclass(frozen=True)
class Uniform(Latency):
    low: float = 0.0005
    high: float = 0.005

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise InvalidArgument("need 0 <= low <= high")

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class LogNormal(Latency):
    """Heavy-tailed latency: median ``median`` seconds, shape ``sigma``, capped at ``cap``."""

    median: float = 0.002
    sigma: float = 0.5
    cap: float = 1.0

    def sample(self, rng: random.Random) -> float:
        return min(self.cap, rng.lognormvariate(math.log(self.median), self.sigma))


@dataclass(frozen=True)
class LinkConfig:
    """Behaviour of messages on one link (or every link, as the default)."""

    latency: Latency = field(default_factory=Uniform)
    #: Probability a message is lost.
    loss: float = 0.0
    #: Probability a message is delivered twice (the copy with its own latency).
    duplicate: float = 0.0
    #: Probability a message is held back by an extra ``reorder_delay`` (overtaken by later ones).
    reorder: float = 0.0
    reorder_delay: float = 0.05

    def __post_init__(self) -> None:
        for p in (self.loss, self.duplicate, self.reorder):
            if not 0 <= p <= 1:
                raise InvalidArgument("probabilities must be in [0, 1]")


@dataclass
class NetworkConfig:
    """The default link behaviour plus per-link overrides keyed by ``(source, destination)``."""

    default: LinkConfig = field(default_factory=LinkConfig)
    links: dict[tuple[str, str], LinkConfig] = field(default_factory=dict)

    def link(self, src: str, dst: str) -> LinkConfig:
        return self.links.get((src, dst), self.default) if self.links else self.default

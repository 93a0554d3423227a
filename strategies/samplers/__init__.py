"""Pair samplers: one interface, chosen by name (``make_sampler("aas")``); see base.py for the contract.

Registered names: ``hybrid`` (match-first plus the identity assignment's boundary), ``match_first``
(the most likely unresolved match, WBIA's priority), ``aas`` (Ambiguity-Aware Sampling),
``uncertainty`` (uncertainty + diversity), ``random``, ``coreset`` (k-centre greedy) and ``margin``
(calibrated P(same) closest to 1/2).
"""

from __future__ import annotations

from strategies.samplers.aas import AASSampler
from strategies.samplers.base import (
    PairProposal,
    PairSampler,
    SamplingResult,
    available_samplers,
    make_sampler,
    register_sampler,
)
from strategies.samplers.coreset import CoresetSampler
from strategies.samplers.hybrid import HybridSampler
from strategies.samplers.margin import MarginSampler
from strategies.samplers.match_first import MatchFirstSampler
from strategies.samplers.pool import EmptyPoolError, PairPool, PoolExhaustedError
from strategies.samplers.random_pairs import RandomPairSampler
from strategies.samplers.uncertainty import UncertaintySampler

__all__ = [
    "AASSampler",
    "CoresetSampler",
    "EmptyPoolError",
    "HybridSampler",
    "MarginSampler",
    "MatchFirstSampler",
    "PairPool",
    "PairProposal",
    "PairSampler",
    "PoolExhaustedError",
    "RandomPairSampler",
    "SamplingResult",
    "UncertaintySampler",
    "available_samplers",
    "make_sampler",
    "register_sampler",
]

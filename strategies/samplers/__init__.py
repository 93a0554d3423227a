"""Pair samplers: one interface, chosen by name (``make_sampler("aas")``); see base.py for the contract.

Registered names: ``aas`` (Ambiguity-Aware Sampling), ``uncertainty`` (uncertainty + diversity),
``random``, ``coreset`` (k-centre greedy) and ``margin`` (calibrated P(same) closest to 1/2).
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
from strategies.samplers.margin import MarginSampler
from strategies.samplers.pool import EmptyPoolError, PairPool, PoolExhaustedError
from strategies.samplers.random_pairs import RandomPairSampler
from strategies.samplers.uncertainty import UncertaintySampler

__all__ = [
    "AASSampler",
    "CoresetSampler",
    "EmptyPoolError",
    "MarginSampler",
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

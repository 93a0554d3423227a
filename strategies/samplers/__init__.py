"""Pair samplers: one interface, chosen by name (``make_sampler("aas")``); see base.py for the contract.

Registered names: ``aas`` (Ambiguity-Aware Sampling), ``uncertainty`` (uncertainty + diversity),
``random``, ``coreset`` (k-centre greedy) and ``margin`` (calibrated P(same) closest to 1/2).
"""

from __future__ import annotations

from strategies.samplers.aas import AASSampler
from strategies.samplers.base import (
    EmptyPoolError,
    PairProposal,
    PairSampler,
    PoolExhaustedError,
    SamplingContext,
    SamplingResult,
    available_samplers,
    complete_context,
    make_sampler,
    register_sampler,
)
from strategies.samplers.coreset import CoresetSampler
from strategies.samplers.margin import MarginSampler
from strategies.samplers.random_pairs import RandomPairSampler
from strategies.samplers.uncertainty import UncertaintySampler

__all__ = [
    "AASSampler",
    "CoresetSampler",
    "EmptyPoolError",
    "MarginSampler",
    "PairProposal",
    "PairSampler",
    "PoolExhaustedError",
    "RandomPairSampler",
    "SamplingContext",
    "SamplingResult",
    "UncertaintySampler",
    "available_samplers",
    "complete_context",
    "make_sampler",
    "register_sampler",
]

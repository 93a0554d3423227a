"""Pure algorithms on arrays: kNN graph, similarities, clustering, constraints, NP3, samplers, metrics.

Imports only numpy, scipy, scikit-learn and faiss: no Flask, Redis or torch.
"""

from __future__ import annotations

import logging


class FaissLoaderNoise(logging.Filter):
    """Drops faiss's loader lines about optional builds this wheel does not ship.

    faiss tries its AVX512-SPR, AVX512 and AVX2 builds before the generic one and logs each missing
    module as a ModuleNotFoundError (and the attempt before it) at INFO: expected on most wheels, yet it
    reads like an error in every worker's log. Which build was loaded, and a build that exists but fails
    to load (any other error), still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "ModuleNotFoundError" in message:
            return False
        return not (message.startswith("Loading faiss with ") and message.endswith(" support."))


# Installed here, before any strategies module imports faiss (strategies.knn).
logging.getLogger("faiss.loader").addFilter(FaissLoaderNoise())

"""gunicorn entry point: `gunicorn ml_backend.wsgi:app` (settings from the environment)."""

from __future__ import annotations

import gc
import importlib
import logging

from ml_backend.app import create_app
from ml_backend.settings import Settings

# /predict needs torch (the adapter) and the calibrator; importing them takes seconds of CPU. They are
# imported before the worker serves anything: imported in the background, they held the interpreter
# while the first webhooks waited (a backlog of half a second under 200 events/s), and the first
# prediction round would pay for them otherwise.
WARM_IMPORTS = ("strategies.calibration", "trainer.store", "trainer.registry", "trainer.adapter")


def _warm_up() -> None:
    for module in WARM_IMPORTS:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken optional import must not stop the web server
            logging.getLogger(__name__).warning("warm-up import of %s failed: %s", module, exc)


_settings = Settings.from_env()
logging.basicConfig(level=_settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = create_app(_settings)
_warm_up()
# What is loaded now lives as long as the process: the collector need not walk it again. A full
# collection over torch's quarter-million objects paused every request thread for about 160 ms.
gc.freeze()

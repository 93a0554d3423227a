"""gunicorn entry point: `gunicorn ml_backend.wsgi:app` (settings from the environment)."""

from __future__ import annotations

import importlib
import logging
import threading

from ml_backend.app import create_app
from ml_backend.settings import Settings

# /predict needs torch (the adapter) and the calibrator; importing them takes seconds on a loaded CPU.
# Import them in the background at start-up so the first prediction round does not pay for it.
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
threading.Thread(target=_warm_up, name="reid-al-warm-up", daemon=True).start()

"""gunicorn entry point: `gunicorn ml_backend.wsgi:app` (settings from the environment)."""

from __future__ import annotations

import logging

from ml_backend.app import create_app
from ml_backend.settings import Settings

_settings = Settings.from_env()
logging.basicConfig(level=_settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = create_app(_settings)

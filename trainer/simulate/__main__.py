"""`python -m trainer.simulate ...` — the same as `reid-al simulate ...`."""

from __future__ import annotations

import sys

from trainer.simulate import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m pgolf_jax ...` is `run.py ...` (how a sweep starts each row's run)."""

import sys

from pgolf_jax.cli import main

sys.exit(main())

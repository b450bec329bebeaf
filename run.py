#!/usr/bin/env python3
"""pgolf_jax entry point: `python run.py --config configs/cpu.py [section.field=value ...]`."""
import sys

from pgolf_jax.cli import main

if __name__ == "__main__":
    sys.exit(main())

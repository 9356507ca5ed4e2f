"""Entry point of `python -m wmtp_hf.train` and `accelerate launch -m wmtp_hf.train`."""

import sys

from .cli import main

sys.exit(main())

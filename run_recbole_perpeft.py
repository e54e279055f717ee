"""Command line entry point: ``python run_recbole_perpeft.py --model=PerPEFT --dataset=mmdemo``."""

import sys

from recbole_perpeft.cli import main

if __name__ == "__main__":
    sys.exit(main())

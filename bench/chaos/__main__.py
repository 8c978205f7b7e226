"""`python -m bench.chaos`: see `bench.chaos`."""

from bench.chaos.cli import main

raise SystemExit(main())

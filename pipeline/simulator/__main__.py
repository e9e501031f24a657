"""`python -m pipeline.simulator ...`: run the simulator (see `server.main`)."""

from __future__ import annotations

from pipeline.simulator.server import main

if __name__ == "__main__":
    raise SystemExit(main())

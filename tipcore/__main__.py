import os
import sys

# OpenMP threads that spin while waiting starve everything else on a small shared machine (a Space with
# several visitors, CI, a laptop running the app): wait passively. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tipcore.cli import main  # noqa: E402

sys.exit(main())

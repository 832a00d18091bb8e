import sys

# The OpenMP wait policy is set per job by cli.main before torch loads (ACTIVE for these batch commands; the
# explorer sets PASSIVE for itself); importing the CLI loads no torch.
from tipcore.cli import main

sys.exit(main())

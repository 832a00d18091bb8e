import sys

from tipcore.cli import main

sys.exit(main())

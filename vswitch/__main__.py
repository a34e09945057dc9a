"""`python -m vswitch` runs the daemon, like the `vswitchd` console script."""
import sys

from .daemon import main

sys.exit(main())

import sys

from sammerge.cli import main

sys.exit(main())

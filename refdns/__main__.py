import sys

from refdns.cli import main

sys.exit(main())

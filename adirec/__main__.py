import sys

from adirec.cli import main

sys.exit(main())

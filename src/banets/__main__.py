import sys

from banets.cli import main

sys.exit(main())

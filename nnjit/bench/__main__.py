import sys

from .cpu import main

sys.exit(main())

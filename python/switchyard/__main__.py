"""``python -m switchyard runworker …``"""

import sys

from .cli import main

sys.exit(main())

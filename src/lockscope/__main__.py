"""``python -m lockscope`` runs the ``lockscope`` command."""

import sys

from lockscope.cli import main

sys.exit(main())

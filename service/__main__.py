"""`python -m service`: runs the launcher (service/process/launcher.py)."""

import sys

from service.process.launcher import main

if __name__ == "__main__":
    sys.exit(main())

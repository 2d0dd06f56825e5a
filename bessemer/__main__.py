import sys

from bessemer.cli.main import main

sys.exit(main())

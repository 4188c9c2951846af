import sys

from cgctl.main import main

sys.exit(main())

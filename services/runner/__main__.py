import sys

from services.runner.server import main

sys.exit(main(sys.argv[1:]))

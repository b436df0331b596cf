import sys

from services.identity.server import main

sys.exit(main(sys.argv[1:]))

import sys

from services.retention.server import main

sys.exit(main(sys.argv[1:]))

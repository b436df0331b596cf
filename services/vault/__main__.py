import sys

from services.vault.server import main

sys.exit(main(sys.argv[1:]))

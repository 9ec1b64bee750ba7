import sys

from picsift.launcher import main

sys.exit(main(sys.argv[1:] or ["gui"]))

"""`python -m keras_brt.distribute --workers N -- COMMAND...`: local multi-worker launch."""

import sys

from keras_brt.distribute.strategies import main

sys.exit(main())

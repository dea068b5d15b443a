"""`python -m keras_brt` is the `keras-brt` command."""

import sys

from keras_brt.cli import main

sys.exit(main())

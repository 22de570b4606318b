"""``python -m data_fetch.synthetic [options]``: same as ``python -m data_fetch synthetic``."""
import sys

from data_fetch.synthetic.cli import main

sys.exit(main())

import sys

from clipsearch.demo.build import main

sys.exit(main())

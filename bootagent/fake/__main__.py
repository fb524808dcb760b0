"""``python -m bootagent.fake``: run the fake IMDS without the main CLI."""

from .command import main

raise SystemExit(main())

"""``python -m framebridge_core {train,generate,bench} ...``"""

from .cli import main

raise SystemExit(main())

"""`python -m service.backfill`: see service/backfill/__init__.py."""
from service.backfill.cli import main

main()

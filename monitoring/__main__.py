"""`python -m eightbox.monitoring`: the scheduled monitoring service (monitoring/service.py)."""

from .service import main

main()

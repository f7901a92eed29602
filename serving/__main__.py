"""`python -m eightbox.serving`: the serving API under uvicorn on `settings.serving_port`.

One worker on the asyncio loop: the funnel's models, breakers and popularity board are per process,
and the board and the reloader run as tasks of this loop (started by the app's lifespan). SIGTERM
shuts down gracefully: requests in flight finish, then the impression log and producer are flushed.
"""

from __future__ import annotations

import logging


def main() -> None:
    import uvicorn

    from eightbox.settings import get_settings

    from .bootstrap import bootstrap

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    app, _ = bootstrap(settings)
    uvicorn.run(app, host=settings.serving_host, port=settings.serving_port, workers=1, loop="asyncio",
                access_log=False, log_level="info", timeout_graceful_shutdown=10)


if __name__ == "__main__":
    main()

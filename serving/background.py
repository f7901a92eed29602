"""Start/stop for the serving process's periodic loops (champion reloader, popularity board)."""

from __future__ import annotations

import asyncio


class BackgroundLoop:
    """Mixin: `start()` runs the subclass's `run()` coroutine on the running loop (once); `stop()`
    cancels it and waits. `run()` loops until cancelled and must not let an exception end it."""

    _task: asyncio.Task | None = None
    task_name = "background-loop"

    async def run(self) -> None:  # pragma: no cover - subclasses define it
        raise NotImplementedError

    def start(self) -> asyncio.Task:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name=self.task_name)
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

"""The benchmark's floor: the serving framework doing no recommending at all.

Same stack as the API (FastAPI under uvicorn, one worker, asyncio loop, access log off), but
``POST /recommend`` answers a precomputed list of 10 items, shaped like a `RecommendResponse`. Its
latency under the same open-loop load is what the framework, the HTTP stack and the load generator
cost on this machine; the funnel's p99 is reported as a ratio over it (`bench_serve`).

Run: ``python -m eightbox.serving.floor_server PORT`` (binds 127.0.0.1); `start` does that in a
subprocess on a free port and waits for ``GET /healthz``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from fastapi import FastAPI, Request

K = 10
ITEMS = [{"item_id": f"i{i:06d}", "score": None, "p_click": None, "p_engaged": None, "position": i,
          "source": "static", "explored": False} for i in range(K)]


def create_app() -> FastAPI:
    app = FastAPI(title="eightbox floor server")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/recommend")
    async def recommend(request: Request) -> dict:
        body = await request.json()  # read like the API does, then answer the precomputed list
        return {"request_id": "floor", "user_id": str(body.get("user_id", "")), "rung": "static",
                "items": ITEMS, "explanation": {"stages": [], "model_versions": {}, "experiment_arm": "control"}}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(timeout_s: float = 20.0) -> tuple[subprocess.Popen, str]:
    """The floor server in a subprocess on a free port, once it answers; (process, base url)."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "eightbox.serving.floor_server", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"floor server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"floor server did not answer on {url} within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    import uvicorn

    port = int(sys.argv[1])
    uvicorn.run(create_app(), host="127.0.0.1", port=port, workers=1, loop="asyncio",
                access_log=False, log_level="warning")


if __name__ == "__main__":
    main()

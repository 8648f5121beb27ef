"""``embedbalance-worker``: serve one model over HTTP with uvicorn.

Why we bind the socket ourselves: with ``--port 0`` the kernel picks a free port, and
the one line we print once it is bound is how scripts and tests learn which.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn

from embedbalance_worker.app import WorkerState, create_app
from embedbalance_worker.config import DEVICES, DTYPES, POOLINGS, WorkerConfig

log = logging.getLogger("embedbalance_worker")

API_KEY_ENV = "EMBEDBALANCE_WORKER_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    d = WorkerConfig()
    p = argparse.ArgumentParser(
        prog="embedbalance-worker",
        description="Reference embedding worker: dynamic batching over a local transformers model.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default 8000)")
    p.add_argument(
        "--model", default=None, help="local model folder (default: bundled all-MiniLM-L6-v2)"
    )
    p.add_argument("--model-id", default=None, help="name reported by /info and OpenAI responses")
    p.add_argument("--device", choices=DEVICES, default=d.device)
    p.add_argument("--dtype", choices=DTYPES, default=d.dtype)
    p.add_argument("--pooling", choices=POOLINGS, default=d.pooling)
    p.add_argument("--no-normalize", action="store_true", help="default to un-normalised vectors")
    p.add_argument("--max-batch-tokens", type=int, default=d.max_batch_tokens)
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms)
    p.add_argument("--max-queue-tokens", type=int, default=d.max_queue_tokens)
    p.add_argument("--max-inputs", type=int, default=d.max_inputs)
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--api-key", default=None, help=f"bearer token (or env {API_KEY_ENV})")
    p.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="demo/test only: sleep this long after every forward pass",
    )
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout_s)
    p.add_argument("--log-level", default="info")
    return p


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(
        model_path=args.model,
        model_id=args.model_id,
        device=args.device,
        dtype=args.dtype,
        pooling=args.pooling,
        normalize=not args.no_normalize,
        max_batch_tokens=args.max_batch_tokens,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue_tokens=args.max_queue_tokens,
        max_inputs=args.max_inputs,
        max_body_bytes=args.max_body_bytes,
        torch_threads=args.torch_threads,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        delay_ms=args.delay_ms,
        drain_timeout_s=args.drain_timeout,
    )


class _DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM drains before exiting, and exits 0.

    Stock uvicorn closes the listener at once and re-raises the signal at the end, so
    the process dies by SIGTERM and probes see a refused port instead of a 503.
    """

    def __init__(self, config: uvicorn.Config, state: WorkerState) -> None:
        super().__init__(config)
        self.state = state
        self.exit_code = 0
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        state.on_fatal = self._fatal

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def _fatal(self, exc: BaseException) -> None:
        self.exit_code = 1
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._draining and self._loop is not None:
            self._draining = True
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        log.info("SIGTERM: draining (health 503, no new work, finishing the queue)")
        self.state.begin_drain()
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        finished = await self.state.wait_drained(self.state.config.drain_timeout_s)
        if not finished:
            log.warning("drain timeout: exiting with work still in flight")
        self.should_exit = True


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as exc:
        build_parser().error(str(exc))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    app = create_app(config)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this. Without it, a keep-alive client waits ~40 ms
    # per response (Nagle on the body write meets the client's delayed ACK), because
    # the event loop does not set TCP_NODELAY on sockets handed to it pre-bound.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"embedbalance-worker listening on http://{shown}:{port}", flush=True)
    server = _DrainingServer(
        uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="on"),
        app.state.worker,
    )
    server.run(sockets=[sock])
    sys.exit(server.exit_code)


if __name__ == "__main__":
    main()

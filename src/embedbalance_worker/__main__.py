"""``embedbalance-worker``: serve one model over HTTP with uvicorn.

Flags follow Hugging Face TEI's router where the two overlap (``--model-id`` is what to
load, ``--served-model-name`` what to call it, ``--max-client-batch-size``,
``--payload-limit``...), so a TEI command line mostly carries over. Every flag can also
come from an environment variable, ``EMBEDBALANCE_WORKER_`` + the flag's name in upper
case with ``_`` for ``-`` (``--max-batch-tokens`` -> ``EMBEDBALANCE_WORKER_MAX_BATCH_TOKENS``);
the prefix keeps us clear of variables such as ``HOSTNAME`` and ``PORT`` that shells and
orchestrators set for their own reasons. A flag on the command line wins over its variable.

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
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from embedbalance_worker.app import WorkerState, create_app
from embedbalance_worker.config import DEVICES, DTYPES, POOLINGS, WorkerConfig

log = logging.getLogger("embedbalance_worker")

ENV_PREFIX = "EMBEDBALANCE_WORKER_"
API_KEY_ENV = ENV_PREFIX + "API_KEY"
#: Seconds past the drain timeout after which the process exits whatever it is doing.
HARD_EXIT_GRACE_S = 5.0
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(flag: str) -> str:
    """The variable for ``flag``: ``--payload-limit`` -> ``EMBEDBALANCE_WORKER_PAYLOAD_LIMIT``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _batch_tokens(text: str) -> int | None:
    return None if text.strip().lower() == "auto" else int(text)


class _Flags:
    """Adds options whose defaults come from their environment variable when set."""

    def __init__(self, parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
        self.parser = parser
        self.environ = environ
        self.env_names: dict[str, str] = {}

    def add(
        self,
        flag: str,
        *aliases: str,
        default: Any = None,
        type: Callable[[str], Any] = str,
        help: str = "",
        **kwargs: Any,
    ) -> None:
        name = env_name(flag)
        self.env_names[flag] = name
        raw = self.environ.get(name)
        if raw is not None:
            try:
                default = type(raw)
            except ValueError as exc:
                self.parser.error(f"{name}={raw!r}: {exc}")
        self.parser.add_argument(
            flag, *aliases, default=default, type=type, help=f"{help} [env: {name}]", **kwargs
        )

    def switch(self, flag: str, *aliases: str, help: str = "") -> None:
        name = env_name(flag)
        self.env_names[flag] = name
        default = False
        raw = self.environ.get(name)
        if raw is not None:
            try:
                default = _bool(raw)
            except ValueError as exc:
                self.parser.error(f"{name}={raw!r}: {exc}")
        self.parser.add_argument(
            flag, *aliases, action="store_true", default=default, help=f"{help} [env: {name}]"
        )


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The CLI; ``environ`` (default ``os.environ``) supplies the flags' variables."""
    env = os.environ if environ is None else environ
    d = WorkerConfig()
    p = argparse.ArgumentParser(
        prog="embedbalance-worker",
        description="Reference embedding worker: dynamic batching over a local model.",
    )
    f = _Flags(p, env)
    f.add(
        "--model-id",
        "--model",
        help="model to load: a local folder, or a hub id already in the local Hugging Face "
        "cache (nothing is downloaded); default the bundled all-MiniLM-L6-v2. "
        "--model is a deprecated alias",
    )
    f.add("--served-model-name", help="name reported by /info and OpenAI answers")
    f.add("--hostname", "--host", default="127.0.0.1", help="address to bind (--host: alias)")
    f.add("--port", default=8000, type=int, help="port; 0 picks a free one")
    f.add("--device", default=d.device, choices=DEVICES, help="cpu, cuda, or auto")
    f.add("--dtype", default=d.dtype, choices=DTYPES, help="checked against float32 at start-up")
    f.add(
        "--pooling",
        default=None,
        choices=(*POOLINGS, "last-token"),
        help="override the pooling of the model's sentence-transformers config",
    )
    f.switch("--no-normalize", help="answer un-normalised vectors unless a request asks")
    f.add(
        "--max-batch-tokens",
        default=None,
        type=_batch_tokens,
        help="padded tokens per forward pass; 'auto' (default) calibrates on a CPU, 16384 on a GPU",
    )
    f.add(
        "--max-batch-requests",
        "--max-batch-size",
        default=d.max_batch_size,
        type=int,
        help="texts per forward pass (--max-batch-size: alias)",
    )
    f.add("--max-wait-ms", default=d.max_wait_ms, type=float, help="wait for company when idle")
    f.add(
        "--max-queue-tokens", default=d.max_queue_tokens, type=int, help="queued tokens; 429 past"
    )
    f.add(
        "--max-bulk-batch-tokens",
        default=None,
        type=int,
        help="padded tokens per pass of bulk work (X-Priority: bulk); default --max-batch-tokens",
    )
    f.add(
        "--max-bulk-queue-tokens",
        default=None,
        type=int,
        help="queued tokens past which bulk work gets 429; default half of --max-queue-tokens",
    )
    f.add(
        "--max-concurrent-requests",
        default=d.max_concurrent_requests,
        type=int,
        help="embedding requests inside at once; 429 past, before the body is read",
    )
    f.add(
        "--max-intake-bytes",
        default=d.max_intake_bytes,
        type=int,
        help="large request bodies being read and tokenized at once, in bytes; 429 past",
    )
    f.add(
        "--max-client-batch-size",
        "--max-inputs",
        default=d.max_inputs,
        type=int,
        help="inputs per request (--max-inputs: alias)",
    )
    f.add(
        "--payload-limit",
        "--max-body-bytes",
        default=d.max_body_bytes,
        type=int,
        help="request body bytes (--max-body-bytes: alias)",
    )
    f.switch("--auto-truncate", help="cut over-long inputs instead of answering 413")
    f.add(
        "--tokenization-workers",
        default=d.tokenization_workers,
        type=int,
        help="threads tokenizing long requests",
    )
    f.add("--torch-threads", default=None, type=int, help="intra-op threads (torch's choice)")
    f.add("--api-key", default=None, help="bearer token for every route but /health")
    f.switch("--protect-metrics", help="/metrics requires the API key too")
    f.add(
        "--delay-ms",
        default=0.0,
        type=float,
        help="demo/test only: sleep this long after every forward pass",
    )
    f.add("--drain-timeout", default=d.drain_timeout_s, type=float, help="SIGTERM drain, seconds")
    f.add(
        "--stuck-after",
        default=d.stuck_after_s,
        type=float,
        help="/health fails when a pass or waiting work is older than this, seconds",
    )
    f.add("--log-level", default="info", help="debug, info, warning, error")
    p.set_defaults(env_names=f.env_names)
    return p


def resolve_model(model_id: str | None) -> Path | None:
    """A local folder for ``--model-id``: the folder itself, or a hub id's cached snapshot."""
    if model_id is None:
        return None
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or model_id.startswith((".", "~")) or model_id.count("/") > 1:
        raise ValueError(f"model folder {model_id} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception as exc:
        raise ValueError(
            f"{model_id!r} is neither a local folder nor in the local Hugging Face cache "
            f"(the worker never downloads): {exc}"
        ) from None


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(
        model_path=resolve_model(args.model_id),
        served_model_name=args.served_model_name,
        device=args.device,
        dtype=args.dtype,
        pooling=args.pooling,
        normalize=not args.no_normalize,
        max_batch_tokens=args.max_batch_tokens,
        max_batch_size=args.max_batch_requests,
        max_wait_ms=args.max_wait_ms,
        max_queue_tokens=args.max_queue_tokens,
        max_bulk_batch_tokens=args.max_bulk_batch_tokens,
        max_bulk_queue_tokens=args.max_bulk_queue_tokens,
        max_concurrent_requests=args.max_concurrent_requests,
        max_intake_bytes=args.max_intake_bytes,
        max_inputs=args.max_client_batch_size,
        max_body_bytes=args.payload_limit,
        auto_truncate=args.auto_truncate,
        tokenization_workers=args.tokenization_workers,
        torch_threads=args.torch_threads,
        api_key=args.api_key or None,
        protect_metrics=args.protect_metrics,
        delay_ms=args.delay_ms,
        drain_timeout_s=args.drain_timeout,
        stuck_after_s=args.stuck_after,
    )


class _DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM drains before exiting, and exits 0.

    Stock uvicorn closes the listener at once and re-raises the signal at the end, so
    the process dies by SIGTERM and probes see a refused port instead of a 503. The drain
    is bounded in every phase: a timer ends the process ``HARD_EXIT_GRACE_S`` after the
    drain timeout even if a forward pass or the model load never returns.
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
            deadline = self.state.config.drain_timeout_s + HARD_EXIT_GRACE_S
            timer = threading.Timer(deadline, _hard_exit)
            timer.daemon = True
            timer.start()
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


def _hard_exit() -> None:
    log.error("drain did not finish in time: exiting now")
    logging.shutdown()
    os._exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    app = create_app(config)
    host = args.hostname
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this. Without it, a keep-alive client waits ~40 ms
    # per response (Nagle on the body write meets the client's delayed ACK), because
    # the event loop does not set TCP_NODELAY on sockets handed to it pre-bound.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, args.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"embedbalance-worker listening on http://{shown}:{port}", flush=True)
    server = _DrainingServer(
        uvicorn.Config(
            app,
            log_level=args.log_level,
            access_log=False,
            lifespan="on",
            # A last guard behind our own admission (which answers 429 with JSON): probes
            # and scrapes keep some room above the embedding bound.
            limit_concurrency=config.max_concurrent_requests + 64,
            # Pinned, not "auto": the early answers (413 from Content-Length, 429 at
            # admission) rely on the protocol reading and discarding the unread body
            # on a kept-alive connection, which is tested with h11. With httptools
            # and uvloop installed, a flood of refused large bodies starved other
            # connections in our tests.
            http="h11",
            loop="asyncio",
            timeout_graceful_shutdown=int(HARD_EXIT_GRACE_S),
        ),
        app.state.worker,
    )
    server.run(sockets=[sock])
    # Skip the interpreter's join of worker threads: a model load or forward pass still
    # running in one must not hold the exit.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(server.exit_code)


if __name__ == "__main__":
    main()

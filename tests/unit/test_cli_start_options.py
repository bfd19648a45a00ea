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

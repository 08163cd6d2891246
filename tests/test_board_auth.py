"""Who may open the Board: loopback needs no login, any other host does; --auth and --auth-file parsing; and
`tuneforge board` refuses an open host before gradio (or anything heavy) loads."""

import sys

import pytest

from tuneforge import TuneforgeError
from tuneforge.board.auth import check_bind, is_loopback, parse_auth
from tuneforge.board.cli import cmd_board


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "localhost", "::1", "[::1]"])
def test_loopback_hosts_need_no_login(host):
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "my-box.example.org"])
def test_any_other_host_without_a_login_is_refused_naming_the_flags(host):
    with pytest.raises(TuneforgeError, match="--auth user:password or --auth-file"):
        check_bind(host, None)


def test_any_host_is_allowed_with_a_login():
    check_bind("0.0.0.0", [("ana", "secret")])


def test_auth_flag_is_a_user_and_a_password_that_may_hold_colons():
    assert parse_auth("ana:pa:ss", None) == [("ana", "pa:ss")]
    assert parse_auth(None, None) is None


@pytest.mark.parametrize("bad", ["ana", ":secret", "ana:", ""])
def test_a_bad_auth_flag_names_the_flag_and_never_echoes_the_value(bad):
    with pytest.raises(TuneforgeError, match="--auth takes user:password") as e:
        parse_auth(bad, None)
    assert "secret" not in str(e.value)


def test_an_auth_file_holds_one_login_a_line_with_comments_and_blank_lines(tmp_path):
    path = tmp_path / "logins"
    path.write_text("# the team\nana:one\n\nbo:two:three\n")
    assert parse_auth(None, str(path)) == [("ana", "one"), ("bo", "two:three")]


def test_auth_file_errors_name_the_flag_the_file_and_the_line(tmp_path):
    path = tmp_path / "logins"
    path.write_text("ana:one\nbo-secret\n")
    with pytest.raises(TuneforgeError, match=r"--auth-file `.*logins` line 2: expected user:password") as e:
        parse_auth(None, str(path))
    assert "bo-secret" not in str(e.value)
    with pytest.raises(TuneforgeError, match="does not exist"):
        parse_auth(None, str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("# nobody yet\n")
    with pytest.raises(TuneforgeError, match="has no user:password line"):
        parse_auth(None, str(tmp_path / "empty"))
    with pytest.raises(TuneforgeError, match="not both"):
        parse_auth("a:b", str(path))


def test_the_board_command_refuses_an_open_host_before_loading_gradio(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "gradio", raising=False)
    with pytest.raises(TuneforgeError, match="--host 0.0.0.0"):
        cmd_board(["--host", "0.0.0.0", "--runs-dir", str(tmp_path / "runs")])
    assert "gradio" not in sys.modules and not (tmp_path / "runs").exists()


def test_the_board_command_hands_the_ui_its_flags_and_the_runs(tmp_path, monkeypatch):
    import types

    seen = {}
    fake_app = types.ModuleType("tuneforge.board.app")
    fake_app.launch = lambda **kw: seen.update(kw) or 0
    monkeypatch.setitem(sys.modules, "tuneforge.board.app", fake_app)
    (tmp_path / "logins").write_text("ana:one\n")
    assert cmd_board(["--host", "0.0.0.0", "--port", "7999", "--auth-file", str(tmp_path / "logins"),
                      "--runs-dir", str(tmp_path / "runs"), "--policy", "refuse"]) == 0
    assert seen["host"] == "0.0.0.0" and seen["port"] == 7999 and seen["auth"] == [("ana", "one")]
    assert seen["runs"].policy == "refuse" and seen["runs"].root == str(tmp_path / "runs")
    with pytest.raises(SystemExit):
        cmd_board(["--port", "0"])

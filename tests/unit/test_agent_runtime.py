"""agent/runtime.py parsers: `show proc` and `show servers state` as 2.6 and 3.x print them."""

from __future__ import annotations

import pytest

from roundhouse.agent.runtime import (
    ProcessLimits,
    RuntimeAPIError,
    RuntimeClient,
    SocketUnavailable,
    _server_reply_ok,
    parse_servers_state,
    parse_show_info,
    parse_show_proc,
)

PROC_26 = """\
#<PID>          <type>          <reloads>       <uptime>        <version>
30402           master          1 [failed: 0]   0d00h10m45s     2.6.12-1+deb12u4
# workers
25555           worker          0               0d00h00m00s     2.6.12-1+deb12u4
# old workers
25000           worker          1               0d00h00m43s     2.6.12-1+deb12u4
# programs

"""

PROC_32 = """\
#<PID>          <type>          <reloads>       <uptime>        <version>
1               master          3 [failed: 1]   0d00h02m07s     3.2.4-98813a1
# workers
1271            worker          0               0d00h00m00s     3.2.4-98813a1
# programs

"""


def test_show_proc_26() -> None:
    procs = parse_show_proc(PROC_26)
    assert (procs.master_pid, procs.reloads, procs.failed_reloads) == (30402, 1, 0)
    assert procs.workers == (25555,) and procs.old_workers == (25000,)


def test_show_proc_32() -> None:
    procs = parse_show_proc(PROC_32)
    assert (procs.master_pid, procs.reloads, procs.failed_reloads) == (1, 3, 1)
    assert procs.workers == (1271,) and procs.old_workers == ()


# 3.2 after a reload that failed: the worker that keeps serving is listed as an old one.
PROC_32_FAILED = """\
#<PID>          <type>          <reloads>       <uptime>        <version>
18862           master          2 [failed: 1]   0d00h00m07s     3.2.26-1
# workers
# old workers
18800           worker          2               0d00h01m07s     3.2.26-1
18865           worker          1               0d00h00m07s     3.2.26-1
# programs

"""


def test_show_proc_32_after_a_failed_reload_serves_from_the_newest_old_worker() -> None:
    procs = parse_show_proc(PROC_32_FAILED)
    assert procs.workers == () and procs.old_workers == (18865, 18800)
    assert procs.serving == (18865,)
    assert parse_show_proc(PROC_26).serving == (25555,)


def test_show_proc_garbage() -> None:
    with pytest.raises(RuntimeAPIError):
        parse_show_proc("Unknown command.\n")


def test_show_servers_state() -> None:
    text = (
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
        "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
        "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
        "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr "
        "srv_agent_port\n"
        "4 be_http 1 srv1 127.0.0.1 2 0 256 256 622 1 0 2 0 0 0 0 - 19001 - 0 0 - - 0\n"
        "4 be_http 2 srv2 127.0.0.1 0 5 1 1 622 1 0 0 8 0 0 0 - 1 - 0 0 - - 0\n\n")
    a, b = parse_servers_state(text)
    assert (a.backend, a.server, a.address, a.port, a.op_state, a.weight) == (
        "be_http", "srv1", "127.0.0.1", 19001, 2, 256)
    assert (b.server, b.admin_state) == ("srv2", 5)


@pytest.mark.parametrize(("reply", "ok"), [
    ("\n", True),
    ("", True),
    ("IP changed from '127.0.0.1' to '10.0.0.5', port changed from '1' to '80' by 'stats "
     "socket command'\n\n", True),
    ("no need to change the addr, no need to change the port by 'stats socket command'\n",
     True),
    ("nothing changed\n\n", True),  # 3.4, the same address and port again
    ("Invalid addr 'bogus' by 'stats socket command'\n\n", False),
    ("No such server.\n\n", False),
    ("Absolute weight can only be between 0 and 256 inclusive.\n\n", False),
    ("Backend is using a static LB algorithm and only accepts weights '0%' and '100%'.\n",
     False),
])
def test_server_replies(reply: str, ok: bool) -> None:
    assert _server_reply_ok(reply) is ok


def test_missing_socket_is_unavailable(tmp_path: object) -> None:
    client = RuntimeClient(str(tmp_path), sleep=lambda _: None)
    with pytest.raises(SocketUnavailable):
        client.command("show info")
    with pytest.raises(SocketUnavailable):
        client.wait_until_up(timeout=0.05)
    with pytest.raises(ValueError):
        client.server_command("show info")
    with pytest.raises(ValueError):
        client.replace_certificate("/x/../evil pem", "")


INFO = """\
Name: HAProxy
Version: 3.2.26-1
Pid: 7
Uptime_sec: 3
Memmax_MB: 0
Ulimit-n: 20000
Maxsock: 20000
Maxconn: 9986
Hard_maxconn: 9986
CurrConns: 0
"""


def test_show_info_limits() -> None:
    assert parse_show_info(INFO) == ProcessLimits(max_connections=9986, max_sockets=20000,
                                                  open_files=20000)


def test_show_info_without_limits_is_an_error() -> None:
    with pytest.raises(RuntimeAPIError, match="Maxconn"):
        parse_show_info("Name: HAProxy\nPid: 7\n")
    with pytest.raises(RuntimeAPIError):
        parse_show_info(INFO.replace("Maxconn: 9986", "Maxconn: lots"))


class _Canned(RuntimeClient):
    """Answers every command with one reply, as HAProxy's stats socket would."""

    def __init__(self, reply: str) -> None:
        super().__init__("/nonexistent")
        self.reply = reply

    def command(self, command: str) -> str:
        return self.reply


@pytest.mark.parametrize(("command", "reply", "ok"), [
    ("add server be_http/srv9 127.0.0.1:1 id 9", "New server registered.\n\n", True),
    # Replies seen from HAProxy 2.6 when an option cannot be used on a dynamic server.
    ("add server be_http/srv9 127.0.0.1:1 id 9 cookie x",
     "'cookie' option is not accepted for dynamic server\n\n", False),
    ("add server be_http/srv9 127.0.0.1:1 id 9 ssl ca-file @system-ca",
     "'ca-file' : unable to load /etc/haproxy/@system-ca.\n\n", False),
    ("enable health be_http/srv9", "\n", True),
    ("enable health be_http/srv9", "No such server.\n\n", False),
    ("enable agent be_http/srv9", "\n", True),
])
def test_server_commands_for_added_servers(command: str, reply: str, ok: bool) -> None:
    client = _Canned(reply)
    if ok:
        client.server_command(command)
    else:
        with pytest.raises(RuntimeAPIError, match="be_http/srv9"):
            client.server_command(command)


def test_show_servers_state_gives_the_server_ids() -> None:
    text = ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state "
            "srv_uweight srv_iweight srv_time_since_last_change srv_check_status "
            "srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id "
            "srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port "
            "srv_check_addr srv_agent_addr srv_agent_port\n"
            "3 be_rr 12 srv5 127.0.0.1 0 1 1 1 9 1 0 0 0 0 0 1 - 19003 - 0 0 - - 0\n")
    (s,) = parse_servers_state(text)
    assert (s.server, s.id, s.port, s.admin_state) == ("srv5", 12, 19003, 1)

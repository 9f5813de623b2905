"""The pure parts of issue 17's lifecycle details: LogConfig as dockerd keeps it,
HostConfig.Runtime, ``--group-add`` resolution and the websocket stream of attach."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from skiff.core.api.wsattach import WebSocketStream
from skiff.core.containers import etcfiles, limits
from skiff.core.containers.config import (
    InvalidConfig,
    dns_settings,
    log_config,
    normalize_host_config,
    runtime,
)
from skiff.core.containers.lifecycle import without_link
from skiff.plugins.isolation import users
from skiff.plugins.logging.jsonfile import skiff_container_validate

GROUP = "root:x:0:\ndaemon:x:1:\nwheel:x:10:alice\nstaff:x:50:\nbroken:x:zz:\n"


# -- LogConfig -------------------------------------------------------------------

def test_an_empty_type_is_the_daemons_driver_with_the_options_given() -> None:
    got = log_config({"Type": "", "Config": {"max-size": "1m"}}, "json-file", {})
    assert got == {"Type": "json-file", "Config": {"max-size": "1m"}}


def test_null_config_is_an_empty_object_and_daemon_opts_fill_in() -> None:
    assert log_config({"Type": "json-file", "Config": None}, "json-file", {}) == {
        "Type": "json-file", "Config": {}}
    got = log_config({"Type": "json-file", "Config": {"max-size": "2m"}}, "json-file",
                     {"max-size": "9m", "max-file": "3"})
    assert got == {"Type": "json-file", "Config": {"max-size": "2m", "max-file": "3"}}
    # another driver than the daemon's does not take the daemon's options
    assert log_config({"Type": "none"}, "json-file", {"max-file": "3"}) == {
        "Type": "none", "Config": {}}
    assert log_config(None, "json-file", {}) == {"Type": "json-file", "Config": {}}


@pytest.mark.parametrize("bad", ["json-file", {"Type": 3}, {"Type": "none", "Config": []},
                                 {"Type": "none", "Config": {"a": 1}}])
def test_a_malformed_log_config_is_refused(bad: object) -> None:
    with pytest.raises(InvalidConfig):
        log_config(bad, "json-file", {})


def test_json_file_refuses_unknown_opts_at_create_in_dockerds_words() -> None:
    with pytest.raises(ValueError, match=r"^unknown log opt 'bogus' for json-file log driver$"):
        skiff_container_validate({"LogConfig": {"Type": "json-file", "Config": {"bogus": "1"}}})
    skiff_container_validate({"LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}}})
    skiff_container_validate({"LogConfig": {"Type": "none", "Config": {"bogus": "1"}}})


# -- Runtime -----------------------------------------------------------------------

def test_runtime_is_the_default_or_unknown() -> None:
    assert runtime(None, "skiff") == "skiff"
    assert runtime("", "skiff") == "skiff"
    assert runtime("skiff", "skiff") == "skiff"
    with pytest.raises(InvalidConfig, match=r"^Unknown runtime specified runc$"):
        runtime("runc", "skiff")


# -- --group-add ---------------------------------------------------------------------

def test_group_add_names_and_numbers() -> None:
    assert users.additional_groups(["wheel", "50", "12345", "1"], GROUP) == [10, 50, 12345, 1]
    # a number that is a group's gid is that group; duplicates count once
    assert users.additional_groups(["10", "wheel"], GROUP) == [10]
    assert users.additional_groups(["7"], None) == [7]


@pytest.mark.parametrize("item,message", [
    ("nosuch", "Unable to find group nosuch: no matching entries in group file"),
    ("-5", "Unable to find group -5: groups must be in range"),
    ("broken", "invalid group entry for 'broken'"),
])
def test_group_add_refuses_unknown_names(item: str, message: str) -> None:
    with pytest.raises(users.UserError, match=message):
        users.additional_groups([item], GROUP)


def test_group_add_joins_the_users_own_groups() -> None:
    user = users.resolve_user("alice", "alice:x:1000:1000::/home/alice:/bin/sh\n", GROUP)
    assert user.sgids == [10]
    users.add_groups(user, ["wheel", "staff"], GROUP)
    assert (user.uid, user.gid, user.sgids) == (1000, 1000, [10, 50])


# -- docker rm --link ------------------------------------------------------------------

def test_without_link_by_alias_in_each_form() -> None:
    links = ["db:al", "/cache:/web/c2", "plain", "other:x"]
    assert without_link(links, "al") == ["/cache:/web/c2", "plain", "other:x"]
    assert without_link(links, "c2") == ["db:al", "plain", "other:x"]
    assert without_link(links, "plain") == ["db:al", "/cache:/web/c2", "other:x"]
    assert without_link(links, "db") == links  # a target's name is not its alias


# -- the websocket stream --------------------------------------------------------------

def test_websocket_stream_messages_both_ways() -> None:
    async def main() -> None:
        server_side, client_side = trio.testing.memory_stream_pair()
        ws = WebSocketStream(server_side)
        client = Connection(ConnectionType.CLIENT)

        async def client_events() -> list[object]:
            client.receive_data(await client_side.receive_some())
            return list(client.events())

        await client_side.send_all(client.send(TextMessage(data="hello\n"))
                                   + client.send(BytesMessage(data=b"bin\n")))
        assert await ws.receive_some() == b"hello\nbin\n"
        await ws.send_all(b"out\n")
        events = await client_events()
        assert [(type(e), e.data) for e in events] == [(BytesMessage, b"out\n")]  # type: ignore[attr-defined]
        await client_side.send_all(client.send(Ping(payload=b"p")))
        async with trio.open_nursery() as n:
            n.start_soon(ws.receive_some)
            assert [type(e) for e in await client_events()] == [Pong]
            await client_side.send_all(client.send(CloseConnection(code=1000)))
        assert await ws.receive_some() == b""  # the client closed: end of stdin
        await ws.aclose()

    trio.run(main)


# -- host options ----------------------------------------------------------------------

@pytest.mark.parametrize("hc, words", [
    ({"ShmSize": -1}, "SHM size can not be less than 0"),
    ({"OomScoreAdj": -1001}, "range for oom score adj is [-1000, 1000]"),
    ({"Sysctls": {"kernel.msgmax": "1"}}, "kernel.msgmax"),
    ({"Cgroup": "container:x"}, "not supported by skiff yet"),
    ({"Dns": ["1.2.3.4", "x"]}, "x is not an ip address"),
    ({"DnsSearch": ["a b"]}, "not a single word"),
    ({"DnsOptions": ["ndots:1\nnameserver 1.1.1.1"]}, "not a single word"),
])
def test_host_config_refusals(hc: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidConfig) as err:
        normalize_host_config(hc)
    assert words in str(err.value)


def test_host_config_defaults_pass() -> None:
    hc = normalize_host_config({"ShmSize": 0, "OomScoreAdj": -1000, "Sysctls": {},
                                "Cgroup": "", "Dns": ["fd00::1"], "DnsSearch": ["."]})
    assert dns_settings(hc) == (["fd00::1"], ["."], [])


def test_resolv_conf_parts_round_trip() -> None:
    text = "# generated\nsearch a b\nnameserver 1.1.1.1\nnameserver ::1\noptions ndots:2 rotate\n"
    parts = etcfiles._parse_resolv(text)
    assert parts == (["1.1.1.1", "::1"], ["a", "b"], ["ndots:2", "rotate"])
    assert etcfiles._build_resolv(parts[1], parts[0], parts[2]) == text.partition("\n")[2]
    # "." is dockerd's way to say no search domain
    assert etcfiles._build_resolv(["."], ["1.1.1.1"], []) == "nameserver 1.1.1.1\n"


@pytest.mark.parametrize("hc, words", [
    ({"CgroupParent": "x"}, "daemon.json cgroup-parent"),
    ({"DeviceRequests": [{"Count": 1}]}, "--gpus"),
    ({"IOMaximumBandwidth": 1}, "Maximum IO Bandwidth"),
    ({"CpuPercent": 50}, "Windows-only"),
])
def test_resources_skiff_cannot_apply_are_refused(hc: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError) as err:
        limits.check(hc, None)
    assert words in str(err.value)
    limits.check({"CgroupParent": "", "DeviceRequests": [], "CpuCount": 0}, None)

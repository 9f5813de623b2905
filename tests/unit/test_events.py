"""The event bus and Docker's event filters (core/events.py)."""

from __future__ import annotations

import trio

from skiff.core.events import Event, EventBus, matches


def ev(type: str = "container", action: str = "start", actor: str = "abc123def456",
       **attrs: str) -> Event:
    return Event(type, action, actor, attrs, 1)


def test_type_event_and_label_filters() -> None:
    e = ev(name="web", image="busybox", team="sea")
    assert matches(e, {})
    assert matches(e, {"type": ["container"]})
    assert not matches(e, {"type": ["image"]})
    assert matches(e, {"event": ["start", "stop"]})
    assert not matches(e, {"event": ["die"]})
    assert matches(e, {"label": ["team=sea"]}) and matches(e, {"label": ["team"]})
    assert not matches(e, {"label": ["team=land"]})
    # exec_start: bash -c ... matches event=exec_start
    assert matches(ev(action="exec_start: sh -c true"), {"event": ["exec_start"]})


def test_container_and_image_filters() -> None:
    e = ev(name="web", image="busybox")
    assert matches(e, {"container": ["web"]})
    assert matches(e, {"container": ["abc123def456"]})
    assert matches(e, {"container": ["abc"]})  # an ID prefix
    assert not matches(e, {"container": ["db"]})
    assert matches(e, {"image": ["busybox"]})
    assert not matches(e, {"image": ["alpine"]})
    img = ev("image", "tag", "sha256:1234", name="busybox:mine")
    assert matches(img, {"image": ["busybox:mine"]})
    assert not matches(img, {"container": ["web"]})
    net = Event("network", "connect", "netid",
                {"container": "abc123def456", "name": "front", "type": "bridge"}, 1)
    assert matches(net, {"network": ["front"]}) and matches(net, {"network": ["netid"]})
    assert not matches(net, {"container": ["abc123def456"]})


def test_history_and_live_subscription() -> None:
    async def main() -> None:
        bus = EventBus(history=3)
        first = bus.publish("container", "create", "a")
        for action in ("start", "die", "destroy"):
            bus.publish("container", action, "a")
        # the ring keeps the last three
        assert [e.action for e in bus.history()] == ["start", "die", "destroy"]
        assert bus.history(first.time_nano)[0].action == "start"
        with bus.subscribe(0) as (past, live):
            assert len(past) == 3
            bus.publish("image", "pull", "busybox:latest", {"name": "busybox:latest"})
            got = live.receive_nowait()
            assert got.to_json()["Actor"] == {"ID": "busybox:latest",
                                               "Attributes": {"name": "busybox:latest"}}
        # the subscription ended with the block: publishing still works
        bus.publish("container", "start", "b")

    trio.run(main)


def test_to_json_has_docker_fields() -> None:
    data = Event("container", "die", "cid", {"image": "busybox", "exitCode": "3"},
                 1_700_000_000_123_456_789).to_json()
    assert data["status"] == "die" and data["id"] == "cid" and data["from"] == "busybox"
    assert data["time"] == 1_700_000_000 and data["timeNano"] == 1_700_000_000_123_456_789
    assert data["scope"] == "local" and data["Type"] == "container"
    net = Event("network", "create", "nid", {"name": "n", "type": "bridge"}, 5).to_json()
    assert "status" not in net and net["Action"] == "create"

"""Request bodies with fields of the wrong JSON type: a 400 naming the field, as
dockerd's decoder answers, never a 500; and a handler bug is a 500 naming the operation."""

from __future__ import annotations

import json

import pytest
import trio

from skiff.core.api import bodytypes
from skiff.core.api.errors import BadRequest
from skiff.core.api.router import Request, Router


@pytest.mark.parametrize(("body", "field"), [
    ({"Name": 5}, "types.NetworkCreateRequest.Name of type string"),
    ({"IPAM": {"Driver": True}}, "types.NetworkCreateRequest.IPAM.Driver of type string"),
    # as Go's decoder: the type of the element that did not fit
    ({"Labels": {"a": 1}}, "number 1 into Go struct field types.NetworkCreateRequest.Labels "
                           "of type string"),
    ({"IPAM": {"Config": [{"Subnet": []}]}},
     "array into Go struct field types.NetworkCreateRequest.IPAM.Config.Subnet of type string"),
    ({"internal": "yes"}, "types.NetworkCreateRequest.Internal of type bool"),
    ([], "Go value of type types.NetworkCreateRequest"),
])
def test_a_field_of_the_wrong_type_is_a_400_naming_it(body: object, field: str) -> None:
    with pytest.raises(BadRequest) as err:
        bodytypes.checked(body, bodytypes.NETWORK_CREATE, "types.NetworkCreateRequest")
    assert field in err.value.message
    assert err.value.message.startswith("json: cannot unmarshal ")


def test_ints_are_int64_and_bools_are_not_ints() -> None:
    shape = bodytypes.CONTAINER_UPDATE
    bodytypes.checked({"Memory": 2**63 - 1, "CpuShares": 2.0}, shape, "U")
    for bad in ({"Memory": 2**63}, {"Memory": True}, {"Memory": 1.5}, {"Memory": "1"}):
        with pytest.raises(BadRequest):
            bodytypes.checked(bad, shape, "U")


def test_what_go_accepts_passes() -> None:
    body = {"Cmd": "echo hi", "Entrypoint": ["sh", "-c"], "Env": None, "Unknown": {"x": 1},
            "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}},
            "NetworkingConfig": {"EndpointsConfig": {"n": {"Aliases": ["a"]}}}}
    assert bodytypes.checked(body, bodytypes.CONTAINER_CREATE, "C") == body
    assert bodytypes.checked(None, bodytypes.NETWORK_CONNECT, "C") == {}
    # what docker-compose 1.29 sends for a network with an aux address
    ipam = {"IPAM": {"Driver": "default", "Options": None, "Config": [
        {"Subnet": "10.9.0.0/24", "AuxiliaryAddresses": {"host1": "10.9.0.5"}}]}}
    assert bodytypes.checked(ipam, bodytypes.NETWORK_CREATE, "N") == ipam
    with pytest.raises(BadRequest):
        bodytypes.checked({"Cmd": ["sh", 1]}, bodytypes.CONTAINER_CREATE, "C")


def test_a_handler_bug_is_a_500_that_names_the_operation() -> None:
    router = Router()

    async def inspect_thing(req: Request) -> None:
        raise KeyError("Config")

    router.add("GET", "/things/json", inspect_thing)
    res = trio.run(router.handle, Request.build("GET", "/v1.41/things/json"))
    assert res is not None and res.status == 500
    message = json.loads(res.body)["message"]
    assert message.startswith("test_bodytypes inspect_thing failed: "), message
    assert "Config" in message

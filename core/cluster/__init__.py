"""The cluster store: what several skiffd hosts share (daemon.json ``cluster-store``).

``settings`` reads the three daemon.json keys as dockerd 20.10 spells them,
``etcd`` speaks etcd's v3 API through its JSON gateway, and ``membership``
keeps this daemon registered under a lease and watches the others.
docs/networking.md, "The cluster store", is the operator's view.
"""

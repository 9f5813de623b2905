"""The Kubernetes Container Runtime Interface (CRI) over gRPC: docs/cri.md.

Served by skiffd next to the Docker API when daemon.json ``cri`` names a
socket, on the same engine (image store, registries).  ``runtime_v1/`` holds
the generated code of the CRI's api.proto; ``bridge.py`` is the one door from
gRPC's threads to the trio loop; ``server.py`` the socket and its life.
grpcio is imported only when the CRI is turned on (the ``cri`` extra).
"""

"""Pull from and push to registries (OCI distribution / Docker Registry HTTP API v2).

* :mod:`.client` — a blocking HTTP client of one registry repository:
  manifests, verified blob downloads with resume, uploads and
  cross-repository mounts.  It runs in worker threads.
* :mod:`.auth` — credentials (``X-Registry-Auth``) and the challenge/token
  flow (Basic, Bearer) the client answers a 401 with.
* :mod:`.endpoints` — daemon.json's registry keys (mirrors, insecure
  registries, timeouts) and the endpoints they yield for a registry.
* :mod:`.errors` — the registry errors, each also a core error kind.
* :mod:`.manifest` — media types, parsing, platform selection.
* :mod:`.metadata` — which registry blob each local layer came from or went to
  (Docker's v2metadata), so a push can skip or mount instead of uploading.
* :mod:`.pull` / :mod:`.push` — the async orchestration on trio, reporting
  Docker's JSON progress messages.
* :mod:`.context` — what they are given of the daemon: the image and layer
  stores, the registry settings and the worker threads.
"""

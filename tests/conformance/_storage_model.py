"""Reference model and tools for the storage-driver conformance suite.

The model is a plain dict ``path -> Node`` that layer tars are applied to with
the OCI image spec's rules, entry by entry.  A driver is right when its
mounted view lists the same as the model.  Hard links are modelled as two
paths holding the same ``Node`` object.

Run as a script (``python _storage_model.py``, inside ``unshare -m``), this
module performs the mounts a driver describes (``StorageDriver.mounts``), then
optional writes, and prints the listing of the result as JSON: the view a
container would get, without touching the host's mount table.  It imports only
the standard library and ``skiff.core.syscalls`` so it starts fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import sys
import tarfile
from dataclasses import dataclass, field
from typing import Any

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
#: attributes a listing ignores: overlayfs bookkeeping and host security labels
IGNORED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "security.selinux")
#: a valid v2 file-capability value: cap_net_bind_service permitted + effective
CAP_NET_BIND = bytes.fromhex("0100000200040000000000000000000000000000")


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class Node:
    """One filesystem object of the model (identity matters: hard links share it)."""

    kind: str  #: "f" file, "d" dir, "l" symlink, "c"/"b" device, "p" fifo
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_600_000_000
    data: bytes = b""
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)

    def copy(self) -> Node:
        return Node(self.kind, self.mode, self.uid, self.gid, self.mtime, self.data,
                    self.target, self.rdev, dict(self.xattrs))


@dataclass
class Entry:
    """One entry of a layer tar as the test writes it."""

    path: str
    kind: str  #: Node kinds plus "h" hard link, "w" whiteout, "o" opaque marker (path = dir)
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_600_000_000
    data: bytes = b""
    target: str = ""  #: symlink content, or hard link target path
    rdev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)

    def node(self) -> Node:
        return Node(self.kind, self.mode, self.uid, self.gid, self.mtime, self.data,
                    self.target, self.rdev, dict(self.xattrs))


Model = dict[str, Node]


def new_model() -> Model:
    return {"": Node("d", 0o755)}


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _drop(model: Model, path: str) -> None:
    for p in [p for p in model if p == path or p.startswith(path + "/")]:
        del model[p]


def clone(model: Model) -> Model:
    """A deep copy that keeps hard links (shared nodes) shared."""
    copies: dict[int, Node] = {}
    out = {}
    for p, n in model.items():
        if id(n) not in copies:
            copies[id(n)] = n.copy()
        out[p] = copies[id(n)]
    return out


def apply(model: Model, entries: list[Entry]) -> Model:
    """The model after a layer tar of ``entries``: OCI rules, in tar order."""
    model = clone(model)
    written: set[str] = set()
    for e in entries:
        if e.kind == "w":
            _drop(model, e.path)
            continue
        if e.kind == "o":
            prefix = e.path + "/" if e.path else ""
            for p in [p for p in model if p.startswith(prefix) and p != e.path]:
                if p not in written:
                    del model[p]
            continue
        assert model.get(_parent(e.path), Node("f")).kind == "d", f"no parent for {e.path}"
        old = model.get(e.path)
        if e.kind == "h":
            _drop(model, e.path)
            model[e.path] = model[e.target]
        elif e.kind == "d" and old is not None and old.kind == "d":
            old.mode, old.uid, old.gid, old.mtime = e.mode, e.uid, e.gid, e.mtime
            old.xattrs = dict(e.xattrs)
        else:
            _drop(model, e.path)
            model[e.path] = e.node()
        written.add(e.path)
    return model


def tar_bytes(entries: list[Entry]) -> bytes:
    """The layer tar of ``entries``, as a registry would serve it (uncompressed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            if e.kind == "w":
                d, _, b = e.path.rpartition("/")
                ti = tarfile.TarInfo((d + "/" if d else "") + WHITEOUT + b)
                ti.mtime = e.mtime
                tf.addfile(ti)
                continue
            if e.kind == "o":
                ti = tarfile.TarInfo((e.path + "/" if e.path else "") + OPAQUE)
                ti.mtime = e.mtime
                tf.addfile(ti)
                continue
            ti = tarfile.TarInfo(e.path)
            ti.mode, ti.uid, ti.gid, ti.mtime = e.mode, e.uid, e.gid, e.mtime
            for k, v in sorted(e.xattrs.items()):
                ti.pax_headers["SCHILY.xattr." + k] = v.decode("utf-8", "surrogateescape")
            body = None
            if e.kind == "f":
                ti.size = len(e.data)
                body = io.BytesIO(e.data)
            elif e.kind == "d":
                ti.type = tarfile.DIRTYPE
            elif e.kind == "l":
                ti.type, ti.linkname = tarfile.SYMTYPE, e.target
            elif e.kind == "h":
                ti.type, ti.linkname = tarfile.LNKTYPE, e.target
            elif e.kind in "cb":
                ti.type = tarfile.CHRTYPE if e.kind == "c" else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = e.rdev
            elif e.kind == "p":
                ti.type = tarfile.FIFOTYPE
            tf.addfile(ti, body)
    return buf.getvalue()


def regular_size(entries: list[Entry]) -> int:
    """What ``apply_diff`` reports: the bytes of the regular files in the tar."""
    return sum(len(e.data) for e in entries if e.kind == "f")


def layer_size(model: Model, entries: list[Entry]) -> int:
    """What ``diff_size`` reports: regular files this layer wrote that survive, once each."""
    seen: set[int] = set()
    total = 0
    for e in entries:
        n = model.get(e.path)
        if e.kind in "fh" and n is not None and n.kind == "f" and id(n) not in seen:
            seen.add(id(n))
            total += len(n.data)
    return total


def expected_listing(model: Model) -> dict[str, Any]:
    """The model in the shape :func:`listing` gives for a real tree."""
    entries = {}
    groups: dict[int, list[str]] = {}
    for path, n in model.items():
        entries[path] = _row(n.kind, n.mode, n.uid, n.gid, n.mtime, n.data, n.target,
                             n.rdev, n.xattrs, root=(path == ""))
        if n.kind == "f":
            groups.setdefault(id(n), []).append(path)
    links = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    return {"entries": entries, "links": links}


def model_changes(old: Model | None, new: Model) -> list[tuple[str, int]]:
    """What ``changes`` must report: (path, kind) with Docker's kinds 0 C, 1 A, 2 D."""
    old = old or new_model()
    out: list[tuple[str, int]] = []

    def children(m: Model, d: str) -> dict[str, Node]:
        prefix = d + "/" if d else ""
        return {p[len(prefix):]: n for p, n in m.items()
                if p and p.startswith(prefix) and "/" not in p[len(prefix):]}

    def added(d: str) -> None:
        for name, n in children(new, d).items():
            p = f"{d}/{name}" if d else name
            out.append(("/" + p, 1))
            if n.kind == "d":
                added(p)

    def compare(d: str) -> None:
        oc, nc = children(old, d), children(new, d)
        for name in oc.keys() - nc.keys():
            out.append(("/" + (f"{d}/{name}" if d else name), 2))
        for name, n in nc.items():
            p = f"{d}/{name}" if d else name
            o = oc.get(name)
            if o is None:
                out.append(("/" + p, 1))
                if n.kind == "d":
                    added(p)
                continue
            if _node_differs(o, n):
                out.append(("/" + p, 0))
            if n.kind == "d":
                if o.kind == "d":
                    compare(p)
                else:
                    added(p)

    compare("")
    # Docker's rule: a directory holding a change is itself reported modified
    listed = {p for p, _ in out}
    for p, _ in list(out):
        parent = p.rsplit("/", 1)[0]
        while parent and parent not in listed:
            listed.add(parent)
            out.append((parent, 0))
            parent = parent.rsplit("/", 1)[0]
    return sorted(out, key=lambda c: tuple(os.fsencode(x) for x in c[0][1:].split("/")))


def _node_differs(a: Node, b: Node) -> bool:
    if (a.kind, a.mode, a.uid, a.gid, a.mtime, a.xattrs) != (
        b.kind, b.mode, b.uid, b.gid, b.mtime, b.xattrs
    ):
        return True
    if a.kind == "d":
        return False
    return (len(a.data), a.target, a.rdev) != (len(b.data), b.target, b.rdev)


# ---------------------------------------------------------------------------
# Listing a real tree
# ---------------------------------------------------------------------------


def _row(kind: str, mode: int, uid: int, gid: int, mtime: int, data: bytes, target: str,
         rdev: tuple[int, int], xattrs: dict[str, bytes], root: bool = False) -> list[Any]:
    content = hashlib.sha256(data).hexdigest()[:16] + f":{len(data)}" if kind == "f" else ""
    return [
        kind, oct(mode), uid, gid,
        None if root else mtime,  # the root's mtime belongs to no layer
        content, target, list(rdev) if kind in "cb" else None,
        {k: v.hex() for k, v in sorted(xattrs.items())},
    ]


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        if name.startswith(IGNORED_XATTR_PREFIXES):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def listing(root: str) -> dict[str, Any]:
    """Every entry under ``root`` with what the model records, plus hard-link groups."""
    entries = {}
    groups: dict[tuple[int, int], list[str]] = {}

    def visit(rel: str) -> None:
        path = os.path.join(root, rel) if rel else root
        st = os.lstat(path)
        mode = st.st_mode
        data, target, rdev = b"", "", (0, 0)
        if stat.S_ISREG(mode):
            kind = "f"
            with open(path, "rb") as f:
                data = f.read()
            if st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
        elif stat.S_ISDIR(mode):
            kind = "d"
        elif stat.S_ISLNK(mode):
            kind, target = "l", os.readlink(path)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = "c" if stat.S_ISCHR(mode) else "b"
            rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        elif stat.S_ISFIFO(mode):
            kind = "p"
        else:
            kind = "?"
        entries[rel] = _row(kind, stat.S_IMODE(mode), st.st_uid, st.st_gid, int(st.st_mtime),
                            data, target, rdev, _xattrs(path), root=(rel == ""))
        if kind == "d":
            for name in sorted(os.listdir(path)):
                visit(f"{rel}/{name}" if rel else name)

    visit("")
    links = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    return {"entries": entries, "links": links}


def mount_points_under(path: str) -> list[str]:
    """Mount points at or below ``path`` in this process's mount namespace."""
    real = os.path.realpath(path).rstrip("/")
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ").replace("\\011", "\t")
            point = point.replace("\\012", "\n").replace("\\134", "\\")
            if point == real or point.startswith(real + "/"):
                found.append(point)
    return found


# ---------------------------------------------------------------------------
# Performing described mounts (run as a script, in a private mount namespace)
# ---------------------------------------------------------------------------

_FLAGS = {"ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024}
_MS_BIND, _MS_REC, _MS_REMOUNT = 4096, 16384, 32


def _perform(spec: dict[str, Any], target: str) -> None:
    from skiff.core import syscalls

    flags = 0
    rec = False
    data = []
    for opt in spec["options"]:
        if opt in _FLAGS:
            flags |= _FLAGS[opt]
        elif opt in ("bind", "rbind"):
            rec = rec or opt == "rbind"
        elif opt in ("rw", "rprivate", "private"):
            continue
        else:
            data.append(opt)
    dest = os.path.join(target, spec["destination"].lstrip("/"))
    if spec["type"] == "bind":
        syscalls.mount(spec["source"], dest, None, _MS_BIND | (_MS_REC if rec else 0))
        if flags:
            syscalls.mount(None, dest, None, _MS_BIND | _MS_REMOUNT | flags)
        return
    if spec.get("cwd"):
        os.chdir(spec["cwd"])
    syscalls.mount(spec["source"], dest, spec["type"], flags, ",".join(data) or None)


def _act(root: str, action: list[Any]) -> None:
    op, rel = action[0], action[1]
    path = os.path.join(root, rel)
    if op == "write":
        with open(path, "wb") as f:
            f.write(bytes.fromhex(action[2]))
    elif op == "mkdir":
        os.mkdir(path)
    elif op == "unlink":
        os.unlink(path)
    elif op == "rmtree":
        import shutil

        shutil.rmtree(path)
    elif op == "chmod":
        os.chmod(path, action[2])
    elif op == "utime":
        os.utime(path, (action[2], action[2]), follow_symlinks=False)
    else:
        raise ValueError(f"unknown action {op}")


def main() -> None:
    """stdin: {"mounts": [...], "target": dir, "actions": [...]}; stdout: the listing."""
    job = json.load(sys.stdin)
    target = job["target"]
    for spec in job["mounts"]:
        _perform(spec, target)
    for action in job.get("actions", []):
        _act(target, action)
    json.dump(listing(target), sys.stdout)


if __name__ == "__main__":
    main()

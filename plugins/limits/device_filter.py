"""The cgroup v2 device filter: an eBPF program made from a container's rules.

cgroup v2 has no ``devices.allow``.  Instead, on every mknod and every open
of a device node, the kernel runs the ``BPF_PROG_TYPE_CGROUP_DEVICE``
programs attached to the task's group and to each of its ancestors; any one
returning 0 makes the call fail with EPERM.  :func:`assemble` writes such a
program from the result of ``device_rules.effective``, so it decides as the
v1 kernel would on the same list.

The program, in eBPF assembly (32-bit loads and ALU, so values are
zero-extended and compare as unsigned)::

        r2 = *(u32 *)(r1 + 0)      access_type: device type | access << 16
        r4 = *(u32 *)(r1 + 4)      major
        r5 = *(u32 *)(r1 + 8)      minor
        w3 = w2 >> 16              access: MKNOD 1, READ 2, WRITE 4
        w2 &= 0xffff               type: BLOCK 1, CHAR 2
    then per exception, in order (deny by default shown)
        if r2 != TYPE goto next
        w1 = w3 & ~ACCESS          the exception must cover every bit asked
        if r1 != 0 goto next       (allow by default: w1 = w3 & ACCESS,
        if r4 != MAJOR goto next    if r1 == 0 goto next: any shared bit)
        if r5 != MINOR goto next   (the number tests only where not *)
        r0 = VERDICT; exit
    and last
        r0 = DEFAULT; exit

It is attached with ``BPF_F_ALLOW_MULTI`` (as runc does), so a program
attached below it could only deny more, and it stays attached as long as the
group exists: the group's rmdir detaches and frees it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence

from skiff.plugins.limits import device_rules

# an extension module cffi builds at install time: no source for mypy to read
from skiff.plugins.limits._bpf import ffi, lib  # type: ignore[import-not-found]
from skiff.plugins.limits.device_rules import DevException, Rule

# <linux/bpf.h>
BPF_CGROUP_DEVICE = 6  #: enum bpf_attach_type
BPF_F_ALLOW_MULTI = 2
DEV_BLOCK, DEV_CHAR = 1, 2  #: BPF_DEVCG_DEV_*

# instruction classes, sizes, modes, operations and sources (<linux/bpf_common.h>)
_LDX_MEM_W = 0x01 | 0x60 | 0x00
_ALU32_AND_K = 0x04 | 0x50
_ALU32_RSH_K = 0x04 | 0x70
_ALU32_MOV_K = 0x04 | 0xB0
_ALU32_MOV_X = 0x04 | 0xB0 | 0x08
_JMP_JEQ_K = 0x05 | 0x10
_JMP_JNE_K = 0x05 | 0x50
_JMP_EXIT = 0x05 | 0x90

_TYPES = {"b": DEV_BLOCK, "c": DEV_CHAR}
#: room for the verifier's explanation when a program is refused
_LOG_SIZE = 64 * 1024


class DeviceFilterError(OSError):
    """The filter could not be loaded or attached: the container must not start."""


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _block(e: DevException, verdict: bool, default_allow: bool) -> list[tuple[int, int, int]]:
    """One exception's test as ``(code, dst, imm)`` jumps and moves; the jumps'
    offsets are filled in by :func:`assemble` (to the next block)."""
    out: list[tuple[int, int, int]] = [(_JMP_JNE_K, 2, _TYPES[e.type])]
    if default_allow:
        out += [(_ALU32_MOV_X, 1, 3), (_ALU32_AND_K, 1, e.access), (_JMP_JEQ_K, 1, 0)]
    elif e.access != device_rules.ALL_ACCESS:
        mask = device_rules.ALL_ACCESS & ~e.access
        out += [(_ALU32_MOV_X, 1, 3), (_ALU32_AND_K, 1, mask), (_JMP_JNE_K, 1, 0)]
    if e.major is not None:
        out.append((_JMP_JNE_K, 4, e.major))
    if e.minor is not None:
        out.append((_JMP_JNE_K, 5, e.minor))
    out += [(_ALU32_MOV_K, 0, int(verdict)), (_JMP_EXIT, 0, 0)]
    return out


def assemble(default_allow: bool, exceptions: Sequence[DevException]) -> bytes:
    """The program for an effective rule set (see the module docstring)."""
    code = [
        _insn(_LDX_MEM_W, dst=2, src=1, off=0),
        _insn(_LDX_MEM_W, dst=4, src=1, off=4),
        _insn(_LDX_MEM_W, dst=5, src=1, off=8),
        _insn(_ALU32_MOV_X, dst=3, src=2),
        _insn(_ALU32_RSH_K, dst=3, imm=16),
        _insn(_ALU32_AND_K, dst=2, imm=0xFFFF),
    ]
    for e in exceptions:
        block = _block(e, not default_allow, default_allow)
        for i, (op, dst, imm) in enumerate(block):
            if op in (_JMP_JNE_K, _JMP_JEQ_K):
                # skip the rest of this block: land on the next one's first insn
                code.append(_insn(op, dst=dst, off=len(block) - i - 1, imm=imm))
            elif op == _ALU32_MOV_X:
                code.append(_insn(op, dst=dst, src=imm))
            else:
                code.append(_insn(op, dst=dst, imm=imm))
    code += [_insn(_ALU32_MOV_K, dst=0, imm=int(default_allow)), _insn(_JMP_EXIT)]
    return b"".join(code)


def program_for(rules: Sequence[Rule]) -> bytes | None:
    """The filter for ``rules``, or None when they allow every device (privileged)."""
    default_allow, exceptions = device_rules.effective(rules)
    if default_allow and not exceptions:
        return None
    return assemble(default_allow, exceptions)


def load(program: bytes) -> int:
    """Load ``program`` into the kernel; its descriptor (close-on-exec)."""
    insns = ffi.from_buffer(program)
    fd = lib.skiff_bpf_prog_load_device(insns, len(program) // 8, ffi.NULL, 0)
    if fd < 0:
        err = ffi.errno
        log = ffi.new("char[]", _LOG_SIZE)
        # load again with the verifier's log only to explain the refusal
        lib.skiff_bpf_prog_load_device(insns, len(program) // 8, log, _LOG_SIZE)
        detail = ffi.string(log).decode(errors="replace").strip().splitlines()[-3:]
        raise DeviceFilterError(
            err, f"the kernel refused the device filter program (bpf BPF_PROG_LOAD: "
            f"{os.strerror(err)}){': ' + ' / '.join(detail) if detail else ''}")
    # the kernel gives bpf descriptors without O_CLOEXEC
    os.set_inheritable(fd, False)
    return fd


def prog_id(prog_fd: int) -> int:
    """The kernel's id of a loaded program (what ``attached`` lists)."""
    out = ffi.new("uint32_t *")
    if lib.skiff_bpf_prog_id(prog_fd, out) != 0:
        err = ffi.errno
        raise OSError(err, f"bpf BPF_OBJ_GET_INFO_BY_FD: {os.strerror(err)}")
    return int(out[0])


def attached(group_fd: int) -> list[int]:
    """Ids of the device programs attached to this group itself (not its ancestors')."""
    room = 64
    while True:
        ids = ffi.new("uint32_t[]", room)
        count = ffi.new("uint32_t *", room)
        if lib.skiff_bpf_prog_query(group_fd, BPF_CGROUP_DEVICE, ids, count) == 0:
            return [int(ids[i]) for i in range(count[0])]
        err = ffi.errno
        if err != errno.ENOSPC:
            raise OSError(err, f"bpf BPF_PROG_QUERY: {os.strerror(err)}")
        room = max(room * 2, int(count[0]))


def _detach(group_fd: int, ids: Sequence[int]) -> None:
    for pid in ids:
        fd = lib.skiff_bpf_prog_get_fd_by_id(pid)
        if fd < 0:
            if ffi.errno == errno.ENOENT:
                continue  # freed meanwhile
            err = ffi.errno
            raise OSError(err, f"bpf BPF_PROG_GET_FD_BY_ID {pid}: {os.strerror(err)}")
        try:
            if lib.skiff_bpf_prog_detach(group_fd, fd, BPF_CGROUP_DEVICE) != 0 \
                    and ffi.errno != errno.ENOENT:
                err = ffi.errno
                raise OSError(err, f"bpf BPF_PROG_DETACH: {os.strerror(err)}")
        finally:
            os.close(fd)


def _open_group(group: str) -> int:
    return os.open(group, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


class Programs:
    """Loaded programs, kept by their bytes so that each is loaded once.

    Nearly every container has Docker's default list, hence the same
    program: loading it (the verifier, the JIT) is most of the filter's cost
    on the start path, and one loaded program can be attached to any number
    of groups.  Closing a descriptor here never detaches anything: each
    attachment holds its own reference.  Thread-safe (driver methods run in
    worker threads).
    """

    def __init__(self, limit: int = 16) -> None:
        self.limit = limit
        self._loaded: OrderedDict[bytes, tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def loaded(self, program: bytes) -> Iterator[tuple[int, int]]:
        """``(descriptor, id)`` of ``program``, valid inside the ``with``."""
        with self._lock:
            entry = self._loaded.get(program)
            if entry is None:
                fd = load(program)
                try:
                    entry = (fd, prog_id(fd))
                except BaseException:
                    os.close(fd)
                    raise
                self._loaded[program] = entry
                while len(self._loaded) > self.limit:
                    os.close(self._loaded.popitem(last=False)[1][0])
            else:
                self._loaded.move_to_end(program)
            yield entry

    def close(self) -> None:
        with self._lock:
            while self._loaded:
                os.close(self._loaded.popitem()[1][0])


def install(group: str, program: bytes | None, programs: Programs | None = None) -> int | None:
    """Make ``program`` the group's only device filter; its id.

    The new program is attached before the old ones are detached, so there
    is no moment without a filter; a group that has it already keeps it.
    ``None`` detaches every device program (the group then only has its
    ancestors' filters).  ``programs`` reuses loaded programs (else the
    program is loaded for this call).  Any failure raises
    ``DeviceFilterError`` naming the group.
    """
    try:
        group_fd = _open_group(group)
    except OSError as exc:
        raise DeviceFilterError(exc.errno, f"cannot open cgroup {group}: {exc.strerror}"
                                ) from None
    try:
        try:
            old = attached(group_fd)
        except OSError as exc:
            raise DeviceFilterError(
                exc.errno, f"cannot list the device programs of cgroup {group}: {exc}") from None
        new_id = None
        if program is not None:
            cache = programs if programs is not None else Programs()
            try:
                with cache.loaded(program) as (prog_fd, new_id):
                    if new_id not in old:
                        _attach(group, group_fd, prog_fd)
            finally:
                if programs is None:
                    cache.close()
        try:
            _detach(group_fd, [i for i in old if i != new_id])
        except OSError as exc:
            raise DeviceFilterError(
                exc.errno, f"cannot detach an old device filter of cgroup {group}: {exc}"
            ) from None
        return new_id
    finally:
        os.close(group_fd)


def _attach(group: str, group_fd: int, prog_fd: int) -> None:
    if lib.skiff_bpf_prog_attach(group_fd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI) == 0:
        return
    err = ffi.errno
    hint = (" (an ancestor group holds a device program attached without "
            "BPF_F_ALLOW_MULTI, which forbids programs below it)" if err == errno.EPERM else "")
    raise DeviceFilterError(
        err, f"cannot attach the device filter to cgroup {group}: "
        f"bpf BPF_PROG_ATTACH: {os.strerror(err)}{hint}")


def installed(group: str) -> list[int]:
    """Ids of the device programs attached to ``group`` ([] if it is gone)."""
    try:
        group_fd = _open_group(group)
    except FileNotFoundError:
        return []
    try:
        return attached(group_fd)
    finally:
        os.close(group_fd)

"""cffi out-of-line build of ``skiff.plugins.limits._bpf``: the bpf(2) calls of
the cgroup v2 device filter.

Only the cgroup driver uses them (load a ``BPF_PROG_TYPE_CGROUP_DEVICE``
program, attach it to a container's group, list and detach what is attached),
so they live with the limits plugin rather than in core's syscall module.  The
``union bpf_attr`` layouts come from the kernel's own ``<linux/bpf.h>``
(linux-libc-dev) at build time, so no field offset is written down here.
"""

from cffi import FFI

CDEF = """
int skiff_bpf_prog_load_device(const void *insns, uint32_t insn_cnt,
                               char *log, uint32_t log_size);
int skiff_bpf_prog_attach(int target_fd, int prog_fd, uint32_t attach_type,
                          uint32_t flags);
int skiff_bpf_prog_detach(int target_fd, int prog_fd, uint32_t attach_type);
int skiff_bpf_prog_query(int target_fd, uint32_t attach_type, uint32_t *ids,
                         uint32_t *count);
int skiff_bpf_prog_get_fd_by_id(uint32_t id);
int skiff_bpf_prog_id(int prog_fd, uint32_t *id);
"""

SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/bpf.h>

static int skiff_bpf(int cmd, union bpf_attr *attr)
{
    return (int)syscall(SYS_bpf, cmd, attr, sizeof(*attr));
}

/* A cgroup device program; with `log`, the verifier explains a refusal there. */
int skiff_bpf_prog_load_device(const void *insns, uint32_t insn_cnt,
                               char *log, uint32_t log_size)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = insn_cnt;
    attr.license = (uint64_t)(uintptr_t)"Apache";
    if (log != NULL && log_size > 0) {
        attr.log_level = 1;
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = log_size;
    }
    /* bpftool prog shows it under this name */
    strncpy(attr.prog_name, "skiff_devices", sizeof(attr.prog_name) - 1);
    return skiff_bpf(BPF_PROG_LOAD, &attr);
}

int skiff_bpf_prog_attach(int target_fd, int prog_fd, uint32_t attach_type,
                          uint32_t flags)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.target_fd = (uint32_t)target_fd;
    attr.attach_bpf_fd = (uint32_t)prog_fd;
    attr.attach_type = attach_type;
    attr.attach_flags = flags;
    return skiff_bpf(BPF_PROG_ATTACH, &attr);
}

int skiff_bpf_prog_detach(int target_fd, int prog_fd, uint32_t attach_type)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.target_fd = (uint32_t)target_fd;
    attr.attach_bpf_fd = (uint32_t)prog_fd;
    attr.attach_type = attach_type;
    return skiff_bpf(BPF_PROG_DETACH, &attr);
}

/* The ids of the programs attached to this very group (not its ancestors');
   *count is the room in ids on entry and the number attached on return. */
int skiff_bpf_prog_query(int target_fd, uint32_t attach_type, uint32_t *ids,
                         uint32_t *count)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.query.target_fd = (uint32_t)target_fd;
    attr.query.attach_type = attach_type;
    attr.query.prog_ids = (uint64_t)(uintptr_t)ids;
    attr.query.prog_cnt = *count;
    int rc = skiff_bpf(BPF_PROG_QUERY, &attr);
    *count = attr.query.prog_cnt;
    return rc;
}

int skiff_bpf_prog_get_fd_by_id(uint32_t id)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_id = id;
    return skiff_bpf(BPF_PROG_GET_FD_BY_ID, &attr);
}

int skiff_bpf_prog_id(int prog_fd, uint32_t *id)
{
    struct bpf_prog_info info;
    union bpf_attr attr;
    memset(&info, 0, sizeof info);
    memset(&attr, 0, sizeof attr);
    attr.info.bpf_fd = (uint32_t)prog_fd;
    attr.info.info_len = sizeof info;
    attr.info.info = (uint64_t)(uintptr_t)&info;
    int rc = skiff_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr);
    *id = info.id;
    return rc;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("skiff.plugins.limits._bpf", SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

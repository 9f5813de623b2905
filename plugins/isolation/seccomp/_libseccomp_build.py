"""cffi out-of-line build of ``skiff.plugins.isolation.seccomp._libseccomp``.

Only the daemon loads it, to turn a resolved profile into BPF (the compile
step of ``compiler.py``); the container init never does: it installs the
exported bytes with seccomp(2) through ``skiff.core.syscalls``.  Built by
setup.py like ``skiff.core._syscalls``; needs libseccomp's headers
(Debian's libseccomp-dev) at build time and libseccomp2 at run time.
"""

from cffi import FFI

CDEF = """
typedef void *scmp_filter_ctx;
typedef uint64_t scmp_datum_t;

enum scmp_compare {
    SCMP_CMP_NE = 1, SCMP_CMP_LT = 2, SCMP_CMP_LE = 3, SCMP_CMP_EQ = 4,
    SCMP_CMP_GE = 5, SCMP_CMP_GT = 6, SCMP_CMP_MASKED_EQ = 7,
};

struct scmp_arg_cmp {
    unsigned int arg;
    enum scmp_compare op;
    scmp_datum_t datum_a;
    scmp_datum_t datum_b;
};

struct scmp_version {
    unsigned int major;
    unsigned int minor;
    unsigned int micro;
};

enum scmp_filter_attr {
    SCMP_FLTATR_ACT_DEFAULT, SCMP_FLTATR_ACT_BADARCH, SCMP_FLTATR_CTL_NNP,
    SCMP_FLTATR_CTL_TSYNC, SCMP_FLTATR_API_TSKIP, SCMP_FLTATR_CTL_LOG,
    SCMP_FLTATR_CTL_SSB, SCMP_FLTATR_CTL_OPTIMIZE, SCMP_FLTATR_API_SYSRAWRC,
    ...
};

#define SCMP_ARCH_NATIVE ...
#define SCMP_ARCH_X86 ...
#define SCMP_ARCH_X86_64 ...
#define SCMP_ARCH_X32 ...
#define __NR_SCMP_ERROR ...

const struct scmp_version *seccomp_version(void);
unsigned int seccomp_api_get(void);
scmp_filter_ctx seccomp_init(uint32_t def_action);
void seccomp_release(scmp_filter_ctx ctx);
uint32_t seccomp_arch_resolve_name(const char *arch_name);
uint32_t seccomp_arch_native(void);
int seccomp_arch_add(scmp_filter_ctx ctx, uint32_t arch_token);
int seccomp_attr_set(scmp_filter_ctx ctx, enum scmp_filter_attr attr, uint32_t value);
int seccomp_syscall_resolve_name(const char *name);
int seccomp_syscall_resolve_name_arch(uint32_t arch_token, const char *name);
int seccomp_rule_add_array(scmp_filter_ctx ctx, uint32_t action, int syscall,
                           unsigned int arg_cnt, const struct scmp_arg_cmp *arg_array);
int seccomp_export_bpf(const scmp_filter_ctx ctx, int fd);
"""

SOURCE = """
#include <seccomp.h>
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "skiff.plugins.isolation.seccomp._libseccomp", SOURCE, libraries=["seccomp"]
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

"""skiff's built-in seccomp profile: the behaviour of Docker 20.10's default.

Everything not named here answers EPERM.  What a container may do is the
same as under dockerd 20.10.24 (the same syscalls, the same argument
filters, the same additions for capabilities, architectures and kernels),
with one deliberate difference: io_uring is refused.  Its three syscalls
(io_uring_setup, io_uring_enter, io_uring_register) submit operations that
seccomp never sees, and the subsystem has been the way in for a long run of
kernel privilege escalations (CVE-2022-29582, CVE-2023-2598, CVE-2024-0582);
Docker itself dropped them from its default in 25.0 (moby #46762), as did
ChromeOS and Android.  A container that needs io_uring can be given
``--security-opt seccomp=<profile>`` naming them.

The data is written in skiff's own form: unconditional allowances grouped by
what they are for, then the conditional rules.  ``profile()`` builds the
``Profile`` that ``profile.resolve`` turns into a container's filter, like
any profile an operator supplies.
"""

from __future__ import annotations

from skiff.plugins.isolation.seccomp.profile import Arg, Condition, Profile, Rule

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"
ENOSYS = 38

#: syscalls every container may make, by purpose; ``*32`` and ``*_time64``
#: are the 32-bit ABI's names for the same calls
ALLOWED: dict[str, str] = {
    "files and directories": """
        access chdir chmod chown chown32 creat faccessat faccessat2 fchdir fchmod
        fchmodat fchown fchown32 fchownat futimesat getcwd getdents getdents64 lchown
        lchown32 link linkat mkdir mkdirat mknod mknodat open openat openat2 readlink
        readlinkat rename renameat renameat2 rmdir symlink symlinkat truncate
        truncate64 umask unlink unlinkat utime utimensat utimensat_time64 utimes
    """,
    "file status": """
        fstat fstat64 fstatat64 fstatfs fstatfs64 lstat lstat64 newfstatat stat stat64
        statfs statfs64 statx
    """,
    "extended attributes": """
        fgetxattr flistxattr fremovexattr fsetxattr getxattr lgetxattr listxattr
        llistxattr lremovexattr lsetxattr removexattr setxattr
    """,
    "descriptors and I/O": """
        close close_range copy_file_range dup dup2 dup3 fadvise64 fadvise64_64
        fallocate fcntl fcntl64 fdatasync flock fsync ftruncate ftruncate64 ioctl
        _llseek lseek pipe pipe2 pread64 preadv preadv2 pwrite64 pwritev pwritev2
        read readahead readv sendfile sendfile64 splice sync sync_file_range syncfs
        tee vmsplice write writev
    """,
    "asynchronous I/O (not io_uring, see above)": """
        io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_setup
        io_submit
    """,
    "waiting for events": """
        epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2
        epoll_wait epoll_wait_old eventfd eventfd2 fanotify_mark inotify_add_watch
        inotify_init inotify_init1 inotify_rm_watch _newselect poll ppoll
        ppoll_time64 pselect6 pselect6_time64 select
    """,
    "memory": """
        brk madvise membarrier memfd_create memfd_secret mincore mlock mlock2
        mlockall mmap mmap2 mprotect mremap msync munlock munlockall munmap
        remap_file_pages
    """,
    "processes and threads": """
        execve execveat exit exit_group fork getcpu getpgid getpgrp getpid getppid
        getrusage getsid get_robust_list get_thread_area gettid kill pidfd_open
        pidfd_send_signal prlimit64 process_mrelease rseq set_robust_list setpgid
        setsid set_thread_area set_tid_address tgkill tkill vfork wait4 waitid
        waitpid futex futex_time64 futex_waitv getrlimit setrlimit ugetrlimit
    """,
    "signals": """
        pause restart_syscall rt_sigaction rt_sigpending rt_sigprocmask
        rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
        rt_sigtimedwait_time64 rt_tgsigqueueinfo sigaltstack signalfd signalfd4
        sigprocmask sigreturn
    """,
    "time and timers": """
        adjtimex alarm clock_adjtime clock_adjtime64 clock_getres clock_getres_time64
        clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64
        getitimer gettimeofday nanosleep setitimer time timer_create timer_delete
        timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64
        timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
        timerfd_settime64 times
    """,
    "users, groups and capabilities": """
        capget capset getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups
        getgroups32 getresgid getresgid32 getresuid getresuid32 getuid getuid32
        setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32
        setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid
        setreuid32 setuid setuid32
    """,
    "scheduling": """
        getpriority ioprio_get ioprio_set sched_getaffinity sched_getattr
        sched_getparam sched_get_priority_max sched_get_priority_min
        sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
        sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield
        setpriority
    """,
    "System V and POSIX IPC": """
        ipc mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64
        mq_timedsend mq_timedsend_time64 mq_unlink msgctl msgget msgrcv msgsnd semctl
        semget semop semtimedop semtimedop_time64 shmat shmctl shmdt shmget
    """,
    "sockets": """
        accept accept4 bind connect getpeername getsockname getsockopt listen recv
        recvfrom recvmmsg recvmmsg_time64 recvmsg send sendmmsg sendmsg sendto
        setsockopt shutdown socket socketcall socketpair
    """,
    "the process's own confinement and the rest": """
        getrandom landlock_add_rule landlock_create_ruleset landlock_restrict_self
        prctl seccomp sysinfo uname
    """,
}

#: the flags of new namespaces, which clone must not carry without CAP_SYS_ADMIN
NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)

#: personality(2) values allowed without a capability: PER_LINUX, and with
#: UNAME26 (0x0020000), PER_LINUX32 (0x0008) and the query 0xffffffff
PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)

#: what a capability of the container's set adds
BY_CAPABILITY: dict[str, str] = {
    "CAP_DAC_READ_SEARCH": "open_by_handle_at",
    "CAP_SYS_ADMIN": """
        bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie
        mount mount_setattr move_mount name_to_handle_at open_tree perf_event_open
        quotactl quotactl_fd setdomainname sethostname setns syslog umount umount2
        unshare
    """,
    "CAP_SYS_BOOT": "reboot",
    "CAP_SYS_CHROOT": "chroot",
    "CAP_SYS_MODULE": "delete_module init_module finit_module",
    "CAP_SYS_PACCT": "acct",
    "CAP_SYS_PTRACE": "kcmp pidfd_getfd process_madvise process_vm_readv "
                      "process_vm_writev ptrace",
    "CAP_SYS_RAWIO": "iopl ioperm",
    "CAP_SYS_TIME": "settimeofday stime clock_settime",
    "CAP_SYS_TTY_CONFIG": "vhangup",
    "CAP_SYS_NICE": "get_mempolicy mbind set_mempolicy",
    "CAP_SYSLOG": "syslog",
}

#: what an architecture adds (Docker's spelling of the architectures)
BY_ARCHITECTURE: tuple[tuple[tuple[str, ...], str], ...] = (
    (("ppc64le",), "sync_file_range2"),
    (("arm", "arm64"), "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint "
                       "cacheflush set_tls"),
    (("amd64", "x32"), "arch_prctl"),
    (("amd64", "x32", "x86"), "modify_ldt"),
    (("s390", "s390x"), "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr"),
)

#: the filter's architectures per host architecture: a 64-bit host also
#: filters its 32-bit ABIs, or a syscall made through them (int 0x80 on
#: x86_64) would meet the default action of no filter at all
ARCH_MAP: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SCMP_ARCH_X86_64", ("SCMP_ARCH_X86", "SCMP_ARCH_X32")),
    ("SCMP_ARCH_AARCH64", ("SCMP_ARCH_ARM",)),
    ("SCMP_ARCH_MIPS64", ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32")),
    ("SCMP_ARCH_MIPS64N32", ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64")),
    ("SCMP_ARCH_MIPSEL64", ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32")),
    ("SCMP_ARCH_MIPSEL64N32", ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64")),
    ("SCMP_ARCH_S390X", ("SCMP_ARCH_S390",)),
)


def allowed_names() -> tuple[str, ...]:
    """Every unconditionally allowed syscall, sorted."""
    return tuple(sorted({n for group in ALLOWED.values() for n in group.split()}))


def _rules() -> list[Rule]:
    rules = [Rule(names=allowed_names(), action=ALLOW)]
    # ptrace lets a process read and write another's memory; before 4.8 it
    # also bypassed seccomp itself, so older kernels get it only with
    # CAP_SYS_PTRACE (below)
    rules.append(Rule(names=("ptrace",), action=ALLOW,
                      includes=Condition(min_kernel=(4, 8))))
    rules += [
        Rule(names=("personality",), action=ALLOW,
             args=(Arg(index=0, value=value, value_two=0, op="SCMP_CMP_EQ"),))
        for value in PERSONALITIES
    ]
    for arches, names in BY_ARCHITECTURE:
        rules.append(Rule(names=tuple(names.split()), action=ALLOW,
                          includes=Condition(arches=arches)))
    for cap, names in BY_CAPABILITY.items():
        rules.append(Rule(names=tuple(names.split()), action=ALLOW,
                          includes=Condition(caps=(cap,))))
    # Without CAP_SYS_ADMIN: clone, but never into new namespaces (flags are
    # the first argument, the second on s390) ...
    rules.append(Rule(
        names=("clone",), action=ALLOW,
        args=(Arg(index=0, value=NAMESPACE_FLAGS, value_two=0, op="SCMP_CMP_MASKED_EQ"),),
        excludes=Condition(caps=("CAP_SYS_ADMIN",), arches=("s390", "s390x")),
    ))
    rules.append(Rule(
        names=("clone",), action=ALLOW,
        args=(Arg(index=1, value=NAMESPACE_FLAGS, value_two=0, op="SCMP_CMP_MASKED_EQ"),),
        includes=Condition(arches=("s390", "s390x")),
        excludes=Condition(caps=("CAP_SYS_ADMIN",)),
    ))
    # ... and clone3, whose flags sit in memory a filter cannot read, answers
    # ENOSYS so that libc falls back to clone
    rules.append(Rule(names=("clone3",), action=ERRNO, errno_ret=ENOSYS,
                      excludes=Condition(caps=("CAP_SYS_ADMIN",))))
    return rules


def profile() -> Profile:
    """The built-in profile, unresolved."""
    return Profile(default_action=ERRNO, rules=tuple(_rules()), arch_map=ARCH_MAP)

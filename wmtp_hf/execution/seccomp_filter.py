"""The seccomp filter and fresh session keyring of every sandboxed process under namespaces: no kernel state
that a namespace does not cover (keyrings, BPF maps, perf events, other processes' memory) is reachable.

Loaded by path by `sandbox_server.py` (which runs as `python -I`). The BPF program is built by libseccomp
(the library container runtimes use) through its own Python binding or `pyseccomp` (a ctypes binding with
the same API, the project's dependency on Linux): libseccomp resolves syscall
numbers per architecture, kills any syscall made through another ABI (x32, or 32-bit `int 0x80` on x86_64)
and sets no_new_privs. `build()` makes the filter once per server; each forked process calls `confine()`.

Anchor: the default seccomp profile of Docker / containerd / Podman, which allows most syscalls and denies
those that reach kernel state shared beyond a container or that need privileges a container lacks. Denied
here (EPERM) because a namespace does not cover them or because the sandbox needs them closed:
  - kernel keyrings: add_key, keyctl, request_key (keyrings are per uid, not per namespace);
  - bpf, perf_event_open, userfaultfd, io_uring_* (kernel attack surface; perf reveals other processes);
  - ptrace, process_vm_readv/writev, kcmp, pidfd_getfd (other processes' memory and descriptors);
  - mount, umount2, pivot_root, chroot, the new mount API (fsopen ... mount_setattr), unshare, setns, and
    clone/clone3 with any CLONE_NEW* flag (new namespaces; clone3 answers ENOSYS so the C library falls back
    to clone, whose flags the filter can see);
  - kexec_*, *_module, reboot, swapon/off, acct, quotactl, syslog, settimeofday/clock_settime/adjtimex,
    sethostname/setdomainname, open_by_handle_at/name_to_handle_at, lookup_dcookie, iopl/ioperm,
    personality, vhangup, and the obsolete uselib/ustat/sysfs/_sysctl/nfsservctl (host-wide state).
"""

from __future__ import annotations

import ctypes
import errno
import os

CLONE_NEW_FLAGS = {  # every flag of clone(2) that makes a new namespace
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
DENIED = (
    "add_key keyctl request_key "
    "bpf perf_event_open userfaultfd io_uring_setup io_uring_enter io_uring_register "
    "ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd "
    "mount umount umount2 pivot_root chroot fsopen fsconfig fsmount fspick move_mount open_tree mount_setattr "
    "unshare setns "
    "kexec_load kexec_file_load init_module finit_module delete_module create_module get_kernel_syms "
    "query_module reboot swapon swapoff acct quotactl quotactl_fd syslog settimeofday stime clock_settime "
    "clock_adjtime adjtimex sethostname setdomainname open_by_handle_at name_to_handle_at lookup_dcookie "
    "iopl ioperm personality vhangup uselib ustat sysfs _sysctl nfsservctl vm86 vm86old"
).split()
KEYCTL_JOIN_SESSION_KEYRING = 1
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219}


def _binding():
    """libseccomp's own Python binding (`seccomp`; Debian: python3-seccomp), else `pyseccomp` (PyPI), a ctypes
    binding with the same API."""
    try:
        import seccomp

        return seccomp
    except ImportError:
        pass
    try:
        import pyseccomp

        return pyseccomp
    except (ImportError, RuntimeError) as exc:  # RuntimeError: pyseccomp found no libseccomp
        raise OSError(
            errno.ENOSYS, f"seccomp filter unavailable ({exc}): pip install pyseccomp (and libseccomp2)"
        ) from None


def build():
    """The filter (a libseccomp context; loaded into each process by `confine`). Raises OSError (naming
    what is missing) where libseccomp or its binding is unavailable: the strong mode then does not run."""
    seccomp = _binding()
    deny = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    rules.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    for name in DENIED:
        try:
            rules.add_rule(deny, name)
        except (OSError, ValueError, RuntimeError):
            pass  # no such syscall on this architecture
    for flag in CLONE_NEW_FLAGS.values():
        rules.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    try:
        rules.add_rule(
            seccomp.ERRNO(errno.ENOSYS), "clone3"
        )  # its flags sit in memory the filter cannot read
    except (OSError, ValueError, RuntimeError):
        pass
    return rules


def confine(rules) -> None:
    """In a sandboxed process, after its uid is dropped: join a fresh, empty session keyring (nothing of the
    server's or the evaluator's stays reachable), then load the filter (for this process and its children)."""
    number = SYS_KEYCTL.get(os.uname().machine)
    if number is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(number, KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"keyctl(JOIN_SESSION_KEYRING): {os.strerror(err)}")
    rules.load()

"""Linux namespaces for the sandbox: no network, a root that holds only Python, a private PID space, no privileges.

Standard library only: `sandbox_server.py` loads this file by path (it runs as `python -I`).

Once per server (worker), `enter_worker_namespaces`: a network namespace with only a down loopback, and a
mount namespace whose root (a tmpfs, switched to with pivot_root) holds only `root_paths()` — the Python
installation, the system library folders and the dynamic linker's cache — bound read-only, nosuid and nodev,
a /dev with only null, zero, full, random and urandom, and empty /tmp and /proc; when the process lacks
CAP_SYS_ADMIN, all of it inside a new user namespace mapping its own uid and gid. Per program, a supervisor
that is PID 1 of a new PID namespace (forked by the server after `next_child_in_new_pid_namespace`, or, where
the server cannot switch back to its own PID namespace, forked by a job process after
`enter_job_namespaces(pid=True)`) enters new mount and IPC namespaces (copies of the worker's) and calls
`build_job_filesystem` (a private tmpfs /tmp and /dev/shm, a /proc of the new PID namespace, and a Python
installation that lives under /tmp bound again above that /tmp, read-only, at its own path); each process of
the program calls `drop_privileges` (an unprivileged uid/gid of its own per program, no capabilities), then
`seccomp_filter.confine` (a fresh session keyring, the seccomp filter).

Why the worker's namespaces may be shared by the programs it runs one after another: a program without
capabilities cannot change them (no mounts, no network configuration), and the only state it can create
there, sockets, dies with its processes, which the supervisor kills before the next program starts.
Everything a program could leave for the next one — files (/tmp, /dev/shm), System V IPC objects and
message queues, processes — lives in the per-program namespaces and dies with them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x2000, 0x4000, 0x40000
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}  # else: MS_MOVE + chroot
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 0x400, 0x800, 0x200000, 0x1000000

MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
SYS_MOUNT_SETATTR = 442  # the same number on every architecture since Linux 5.12

PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 28, 38
# SECBIT_NOROOT, NO_SETUID_FIXUP and NO_CAP_AMBIENT_RAISE on, KEEP_CAPS off, all locked: uid 0 gains nothing
SECUREBITS_LOCKED_DOWN = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80
LINUX_CAPABILITY_VERSION_3 = 0x20080522

DEVICES = ("null", "zero", "full", "random", "urandom")  # the only device nodes a program sees
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
WORKDIR = "/tmp/work"  # the program's working directory, inside its private /tmp
NEW_ROOT = "/tmp"  # where the worker builds its root before switching to it (the host's /tmp is then gone)
SYSTEM_PATHS = ("/lib", "/lib32", "/lib64", "/libx32", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32")
SYSTEM_PATHS += ("/etc/ld.so.cache",)
PR_SET_DUMPABLE = 4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.chroot.argtypes = [ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class _MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _encode(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2); raises OSError naming the target."""
    _check(
        _libc.mount(_encode(source), _encode(target), _encode(fstype), flags, _encode(data)),
        f"mount {target}",
    )


def unshare(flags: int, what: str) -> None:
    """unshare(2); raises OSError naming what was asked for."""
    _check(_libc.unshare(flags), f"unshare {what}")


def _write(path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"write {path}: {os.strerror(exc.errno or 0)}") from None


def _enter_user_and(flags: int, what: str) -> bool:
    """unshare(flags); where that is not permitted, unshare(CLONE_NEWUSER | flags) mapping our own ids.
    Returns whether a user namespace was made."""
    try:
        unshare(flags, what)
        return False
    except OSError as exc:
        if exc.errno != errno.EPERM:
            raise
    uid, gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER | flags, f"user + {what}")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    return True


def root_paths() -> list[str]:
    """What the program's root holds of the host, read-only: the Python installation (its prefixes), the
    system library folders its shared libraries and extension modules load from, and the dynamic linker's
    cache. Nested paths are left out (their parent's bind carries them). A Python installation under /tmp
    (a venv made there) is shown at its own path above each program's private /tmp (`tmp_paths`); one that is
    /tmp itself, the program's working directory, or under /dev or /proc cannot be shown."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    prefixes.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    wanted = sorted({os.path.normpath(p) for p in prefixes} | {p for p in SYSTEM_PATHS if os.path.lexists(p)})
    kept: list[str] = []
    for path in wanted:
        if path == "/" or any(path.startswith(parent.rstrip("/") + "/") for parent in kept):
            continue
        clashes = [hidden for hidden in ("/dev", "/proc") if path == hidden or path.startswith(hidden + "/")]
        if path in ("/tmp", WORKDIR) or path.startswith(WORKDIR + "/") or clashes:
            raise OSError(errno.EINVAL, f"the Python installation at {path} cannot be shown to programs")
        kept.append(path)
    return kept


def tmp_paths(paths: list[str]) -> list[str]:
    """The paths of `root_paths()` under /tmp (a Python installation there), which each program's private
    /tmp would cover: `build_job_filesystem` binds them again, read-only, above it."""
    return [path for path in paths if path.startswith("/tmp/")]


_PYTHON_IN_TMP: list[str] = []  # set by enter_worker_namespaces: `tmp_paths` of its root


def enter_worker_namespaces(*, use_mount_setattr: bool = True) -> bool:
    """Move this process into a new network namespace (lo only, down) and a mount namespace whose root holds
    only `root_paths()` (read-only), a minimal /dev and empty /proc and /tmp (see the module docstring).
    Returns whether a user namespace was made (then programs keep this process's uid)."""
    paths = root_paths()
    _PYTHON_IN_TMP[:] = tmp_paths(paths)
    userns = _enter_user_and(CLONE_NEWNET | CLONE_NEWNS, "network + mount namespaces")
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here propagates to other namespaces
    # opened in this namespace (a bind's source must be a mount of it), before /tmp is covered
    sources = {path: os.open(path, os.O_PATH | os.O_NOFOLLOW) for path in paths}
    links = {path: os.readlink(path) for path in paths if os.path.islink(path)}  # before /tmp is covered
    folders = {path for path in paths if os.path.isdir(path) and path not in links}
    host_proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    try:
        mount("tmpfs", NEW_ROOT, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=4096")
        for path, fd in sources.items():
            target = NEW_ROOT + path
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if path in links:
                os.symlink(links[path], target)
                continue
            if path in folders:
                os.mkdir(target)
            else:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
            mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        for name in ("dev", "proc", "tmp"):
            os.makedirs(f"{NEW_ROOT}/{name}", 0o755, exist_ok=True)  # tmp exists if Python lives under it
        os.chmod(f"{NEW_ROOT}/tmp", 0o1777)
        make_tree_readonly(NEW_ROOT, use_mount_setattr=use_mount_setattr)
        _build_dev(NEW_ROOT + "/dev")
        # the host's /proc, for the server (which stays in the host's PID namespace) and because a fresh proc
        # may be mounted in a user namespace only where a full one is visible; each job covers it with its own
        mount(f"/proc/self/fd/{host_proc}", NEW_ROOT + "/proc", None, MS_BIND | MS_REC)
    finally:
        for fd in (*sources.values(), host_proc):
            os.close(fd)
    _switch_root(NEW_ROOT)
    return userns


def _switch_root(new_root: str) -> None:
    """Make `new_root` this mount namespace's root and detach the old one (pivot_root(".", ".")), or where
    pivot_root is unavailable, move it onto / and chroot into it."""
    os.chdir(new_root)
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is not None and _libc.syscall(number, b".", b".") == 0:
        _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    else:
        mount(".", "/", None, MS_MOVE)
        _check(_libc.chroot(b"."), "chroot")
    os.chdir("/")


def enter_job_namespaces(*, pid: bool) -> None:
    """New mount and IPC namespaces for one program, and a new PID namespace when `pid` (the next child
    forked is then its PID 1). Without `pid`, the caller must already be PID 1 of a fresh PID namespace."""
    flags = CLONE_NEWNS | CLONE_NEWIPC | (CLONE_NEWPID if pid else 0)
    unshare(flags, "mount + IPC + PID namespaces" if pid else "mount + IPC namespaces")


def pid_namespace_switch() -> int | None:
    """A descriptor of this process's own PID namespace when it can make a PID namespace for its next child
    and switch back (`next_child_in_new_pid_namespace`, `restore_pid_namespace`), which saves one fork per
    program; None when it cannot (switching back needs CAP_SYS_ADMIN where this PID namespace was made, so
    not inside a user namespace). Tried in a child, since a failed switch back would strand this process."""
    fd = os.open("/proc/self/ns/pid", os.O_RDONLY)
    pid = os.fork()
    if pid == 0:
        try:
            next_child_in_new_pid_namespace()
            restore_pid_namespace(fd)
            os._exit(0)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return fd
    os.close(fd)
    return None


def next_child_in_new_pid_namespace() -> None:
    """The next child this process forks is PID 1 of a new PID namespace (this process stays where it is)."""
    unshare(CLONE_NEWPID, "PID namespace")


def restore_pid_namespace(fd: int) -> None:
    """Children forked from now on are born in this process's own PID namespace (`fd`) again."""
    _check(_libc.setns(fd, CLONE_NEWPID), "setns PID namespace")


def _mount_points() -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) for every mount in this namespace, parents before children."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            path = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), os.fsencode(fields[4]))
            points.append((os.fsdecode(path), set(fields[5].split(","))))  # \040 etc. are octal escapes
    return points


def _remount_each_readonly(root: str) -> None:
    """Fallback for kernels without mount_setattr (before 5.12): remount every mount under `root` read-only,
    nosuid and nodev, keeping the flags that a less privileged mount namespace may not clear."""
    keep = {"noexec": MS_NOEXEC, "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME}
    keep.update(relatime=MS_RELATIME, strictatime=MS_STRICTATIME)
    prefix = root.rstrip("/") + "/"
    for path, options in _mount_points():
        if path != root and not path.startswith(prefix):
            continue
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
        flags |= sum(bit for name, bit in keep.items() if name in options)
        try:
            mount(None, path, None, flags)
        except FileNotFoundError:
            pass  # the mount point is gone: nothing below it is reachable by path


def make_tree_readonly(root: str = "/", *, use_mount_setattr: bool = True) -> None:
    """Make `root` and every mount below it read-only, nosuid and nodev (one mount_setattr call)."""
    if use_mount_setattr:
        attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
        result = _libc.syscall(
            SYS_MOUNT_SETATTR,
            ctypes.c_long(AT_FDCWD),
            _encode(root),
            ctypes.c_long(AT_RECURSIVE),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        )
        if result == 0:
            return
        if ctypes.get_errno() != errno.ENOSYS:
            _check(result, f"mount_setattr {root}")
    _remount_each_readonly(root)


def _build_dev(dev: str) -> None:
    """A read-only /dev with null, zero, full, random, urandom (bound from the host), the usual links and an
    empty shm folder (each program mounts its own /dev/shm there), and nothing else: no disks, no terminals."""
    sources = {name: os.open(f"/dev/{name}", os.O_PATH) for name in DEVICES}
    try:
        mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64")
        for name, fd in sources.items():
            os.close(os.open(f"{dev}/{name}", os.O_WRONLY | os.O_CREAT, 0o666))
            mount(f"/proc/self/fd/{fd}", f"{dev}/{name}", None, MS_BIND)
            # the bind copied the read-only tree's nodev: clear it on these five nodes only
            mount(None, f"{dev}/{name}", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC)
    finally:
        for fd in sources.values():
            os.close(fd)
    for name, target in DEV_LINKS.items():
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(f"{dev}/shm")
    mount(None, dev, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC)


def build_job_filesystem(tmp_bytes: int, owner: tuple[int, int] | None = None) -> str:
    """In a copy of the worker's mount namespace, as PID 1 of a new PID namespace: a private tmpfs /tmp and
    /dev/shm (each at most `tmp_bytes`), the Python installation's paths under /tmp bound again above it at
    the same paths (read-only), and a /proc showing only this PID namespace. Returns the program's working
    directory (owned by `owner`, the program's uid and gid, when given)."""
    links = {path: os.readlink(path) for path in _PYTHON_IN_TMP if os.path.islink(path)}
    python_in_tmp = {path: os.open(path, os.O_PATH) for path in _PYTHON_IN_TMP if path not in links}
    try:
        size = f"size={max(tmp_bytes, 1 << 20)},nr_inodes=4096"
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,{size}")
        os.mkdir(WORKDIR, 0o700)
        if owner is not None:
            os.chown(WORKDIR, *owner)
        for path, target in links.items():
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            os.symlink(target, path)
        for path, fd in python_in_tmp.items():  # read-only binds of the worker's read-only binds
            os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.mkdir(path, 0o755)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            make_tree_readonly(path)
    finally:
        for fd in python_in_tmp.values():
            os.close(fd)
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"mode=1777,{size}")
    mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if os.readlink("/proc/self") != str(os.getpid()):  # the supervisor reads /proc to find what to kill
        raise OSError(errno.EINVAL, "/proc does not show this PID namespace")
    return WORKDIR


def drop_privileges(ids: tuple[int, int] | None = None, *, dumpable: bool = True) -> None:
    """Become `ids` (uid, gid; None: keep them, as in a user namespace that maps only one id), drop every
    capability and set no_new_privs, with securebits locked so that uid 0 regains nothing: neither this
    process nor anything it executes can mount, change namespaces' settings, raise limits, signal or trace
    other users' processes, or gain privileges through set-uid or file-capability programs. `dumpable`
    False: processes of the same uid cannot trace this one or read its memory (the tests' process)."""
    _check(_libc.prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_DOWN, 0, 0, 0), "prctl(PR_SET_SECUREBITS)")
    if ids is not None:  # SECBIT_NO_SETUID_FIXUP keeps the capabilities needed until capset below
        os.setgroups([])
        os.setresgid(ids[1], ids[1], ids[1])
        os.setresuid(ids[0], ids[0], ids[0])
    header, data = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")  # clears the ambient set too
    _check(_libc.prctl(PR_SET_DUMPABLE, int(dumpable), 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")

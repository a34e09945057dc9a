"""Network namespaces: naming, identity, and running code inside one.

A namespace is named either like `ip netns` does (``c1`` means
``/run/netns/c1``) or by a path to a namespace file (``/proc/PID/ns/net``).

Nothing here keeps a file descriptor into a namespace open after use: an open
fd (namespace file, netlink or any other socket) pins the namespace, so
``ip netns del`` would no longer destroy it. The TAP fd a port holds pins its
namespace the same way, which is why the control plane watches
``netns_identity()`` and drops a port once its namespace file is gone.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import threading
from typing import Any, Callable, TypeVar

from .errors import InvalidArgument

T = TypeVar("T")

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl on a namespace fd (Linux >= 4.11)

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def netns_path(spec: str) -> str:
    """The file a namespace spec refers to, without checking that it exists."""
    return spec if "/" in spec else os.path.join(NETNS_RUN_DIR, spec)


def netns_label(path: str) -> str:
    """How to show a namespace to an operator: its `ip netns` name when it has one."""
    head, name = os.path.split(path)
    return name if head == NETNS_RUN_DIR else path


def _nsfs_dev() -> int:
    # All namespace files live on the one nsfs superblock; our own net
    # namespace file is always there to compare against.
    return os.stat("/proc/self/ns/net").st_dev


def resolve_netns(spec: str, where: str = "netns") -> str:
    """Map a namespace name or path to its path, checking it is a live net namespace."""
    path = netns_path(spec)
    try:
        st = os.stat(path)
    except OSError:
        hint = f" (no {path})" if path != spec else ""
        raise InvalidArgument(f"{where}: {spec!r} does not exist{hint}") from None
    # A /run/netns entry whose namespace was deleted but whose file lingers is
    # a plain file on tmpfs, not nsfs.
    if st.st_dev != _nsfs_dev():
        raise InvalidArgument(f"{where}: {spec!r} is not a namespace ({path} is not an nsfs file)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidArgument(f"{where}: {spec!r} cannot be opened: {e.strerror}") from None
    try:
        nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        nstype = CLONE_NEWNET  # kernel without the ioctl: setns will check the type
    finally:
        os.close(fd)
    if nstype != CLONE_NEWNET:
        raise InvalidArgument(f"{where}: {spec!r} is not a network namespace ({path})")
    return path


def netns_identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a namespace file; None when it is gone or no longer a namespace.

    A namespace deleted and re-created under the same name gets a new inode,
    so comparing identities tells "still the same namespace" from "replaced".
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_dev != _nsfs_dev():
        return None
    return (st.st_dev, st.st_ino)


def _enter(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidArgument(f"netns: {netns_label(path)!r} cannot be opened: {e.strerror}") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise InvalidArgument(f"netns: cannot enter {netns_label(path)!r}: {os.strerror(err)} ({errno.errorcode.get(err, err)})")
    finally:
        os.close(fd)


def run_in_netns(path: str, fn: Callable[..., T], *args: Any) -> T:
    """Run fn(*args) inside the namespace at path and return its result.

    setns() switches only the calling thread, so fn runs in a fresh thread that
    enters the namespace first and ends after fn: nothing has to switch back,
    and the caller's thread never leaves its namespace. Sockets and TAP fds fn
    opens belong to the namespace for their whole life. fn's exception is
    re-raised in the caller.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            _enter(path)
            result.append(fn(*args))
        except BaseException as e:  # handed over to the caller's thread
            error.append(e)

    thread = threading.Thread(target=body, name=f"netns:{netns_label(path)}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]

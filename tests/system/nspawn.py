"""A real systemd booted in a container (systemd-nspawn), for the system tests.

The container's root is a directory of our own with the host's `/usr` and `/etc` under it as
overlays: their lower layers are the host's, read-only; whatever the test writes (a user, `/etc/bot`,
a unit, `/usr/local/bin/bot`) goes to an upper layer in our directory and vanishes with it.
`/opt`, `/var`, `/root` and `/home` start empty. `--private-network` leaves the container only
its own loopback, so nothing it runs can reach another machine. It is booted (`-b`): PID 1 in
it is systemd itself, with journald, D-Bus and logind, as on a server.

nspawn is asked to report readiness (`--notify-ready=yes`) on a notify socket of ours: it sends
`READY=1` once the container's systemd has finished booting, with the container's PID 1 as
`X_NSPAWN_LEADER_PID`. Commands run inside with `nsenter` into all of that process's namespaces,
with a clean environment.

`cannot_boot_reason()` says, in one line, why this machine cannot run such a container at all
(not root, no systemd-nspawn, no systemd to boot); the tests skip only for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.fake_systemd import FakeNotifySocket

__all__ = ["Container", "cannot_boot_reason"]

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_BOOT_TIMEOUT_S = 120.0


def cannot_boot_reason() -> str | None:
    """Why this machine cannot boot a systemd container, or None when it can (as far as we know)."""
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is not installed (Debian/Ubuntu: apt-get install systemd-container)"
    if shutil.which("nsenter") is None:
        return "nsenter is not installed (util-linux)"
    if not Path("/usr/lib/systemd/systemd").exists():
        return "there is no /usr/lib/systemd/systemd to boot (apt-get install systemd)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay file system"
    return None


class Container:
    """One booted container; use as a context manager (it powers off and is removed on exit)."""

    def __init__(self, name: str = "bot-system-test") -> None:
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix="bot-nspawn-", dir="/var/tmp"))
        self.root = self.dir / "root"
        self.console = self.dir / "console.log"
        self.leader = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._notify: FakeNotifySocket | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self._boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _boot(self) -> None:
        root = self.root
        for sub in ("usr", "etc", "var", "opt", "root", "home", "tmp", "srv", "mnt"):
            (root / sub).mkdir(parents=True)
        for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
            (root / link).symlink_to(target)
        if Path("/lib64").is_symlink() or Path("/lib64").is_dir():
            (root / "lib64").symlink_to("usr/lib64")
        (root / "root").chmod(0o700)
        (root / "tmp").chmod(0o1777)
        # nspawn looks for os-release before it mounts the overlays over these directories.
        shutil.copy("/etc/os-release", root / "etc" / "os-release")
        for layer in ("usr", "etc"):
            (self.dir / "upper" / layer).mkdir(parents=True)
        self._notify = FakeNotifySocket.at_path(self.dir)
        env = {
            "PATH": _PATH,
            "LANG": "C.UTF-8",
            # The host may run without systemd as PID 1: no cgroup hierarchy of its own to join.
            "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1",
            **self._notify.environ(),
        }
        args = [
            "systemd-nspawn",
            f"--directory={root}",
            f"--machine={self.name}",
            "--private-network",
            "--register=no",
            "--keep-unit",
            "--notify-ready=yes",
            "--console=read-only",
            f"--overlay=/usr:{self.dir / 'upper' / 'usr'}:/usr",
            f"--overlay=/etc:{self.dir / 'upper' / 'etc'}:/etc",
            "--boot",
        ]
        with self.console.open("wb") as console:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, env=env
            )
        notify = self._notify
        deadline = time.monotonic() + _BOOT_TIMEOUT_S
        while True:
            # Woken by nspawn's datagrams; the one-second bound only notices nspawn dying.
            with contextlib.suppress(TimeoutError):
                asyncio.run(notify.wait_for(lambda ms: any(m.get("READY") == "1" for m in ms), timeout_s=1))
                break
            if self._proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited {self._proc.returncode}: {self.console_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the container did not boot: {self.console_tail()}")
        msgs = notify.messages
        leaders = [m.get("X_NSPAWN_LEADER_PID") for m in msgs if m.get("X_NSPAWN_LEADER_PID")]
        assert leaders, [m.fields for m in msgs]
        self.leader = int(str(leaders[-1]))

    def console_tail(self, chars: int = 3000) -> str:
        """The end of what the container printed on its console."""
        try:
            return self.console.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Power the container off (SIGTERM to nspawn), then remove its directory."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._notify is not None:
            self._notify.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- commands inside -------------------------------------------------------------------------

    def run(
        self,
        script: str,
        *,
        user: str | None = None,
        input_text: str | None = None,
        timeout_s: float = 120,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run `script` with bash inside the container: as root, or as `user` through a login
        shell (`runuser -l`, so /etc/profile.d applies and group membership is fresh)."""
        inner = ["/bin/bash", "-euo", "pipefail", "-c", script]
        if user is not None:
            inner = ["/usr/sbin/runuser", "-l", user, "-c", script]
        args = [
            "nsenter",
            f"--target={self.leader}",
            "--all",
            "--",
            "/usr/bin/env",
            "-i",
            f"PATH={_PATH}",
            "HOME=/root",
            "LANG=C.UTF-8",
            "TERM=dumb",
            *inner,
        ]
        done = subprocess.run(
            args, input=input_text, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"exit {done.returncode} from {script!r} (as {user or 'root'}):\n{done.stdout}{done.stderr}"
            )
        return done

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl show UNIT -p ...` as a dict."""
        out = self.run(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_for(self, what: str, predicate: object, timeout_s: float = 90) -> None:
        """Re-evaluate `predicate()` until true; `timeout_s` only bounds a broken run."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout_s
        last: object = None
        while True:
            with contextlib.suppress(AssertionError):
                last = predicate()
                if last:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
            time.sleep(0.2)

    def copy_in(self, source: Path, dest: str) -> Path:
        """Copy a host directory or file to `dest` inside (a path in a directory of ours)."""
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)
        return target

"""A real DNS server for the discovery tests: Debian's dnsmasq on 127.0.0.1, in the
foreground, with records the test writes and changes while it runs."""

from __future__ import annotations

import getpass
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import dns.nameserver
import dns.resolver
from system import system_binary  # noqa: F401  (re-exported for the tests)

DOMAIN = "eb.test"
TTL = 1  # seconds: what dnsmasq hands out for every record below


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair on 127.0.0.1")


class Dnsmasq:
    """One dnsmasq process we own: A/AAAA records in an addn-hosts file (reread on
    SIGHUP) and SRV records in a conf file (read at start, so changing them restarts)."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.hosts = folder / "hosts"
        self.conf = folder / "dnsmasq.conf"
        self.log = folder / "dnsmasq.log"
        self.hosts.write_text("")
        self.conf.write_text("")
        self.proc: subprocess.Popen[bytes] | None = None
        #: Names given A/AAAA records so far: a later set without them must see them gone.
        self._names: set[str] = set()

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.port)]

    def set_hosts(self, records: Mapping[str, Sequence[str]]) -> None:
        """Replace the A/AAAA records ({name: [address, ...]}) and make dnsmasq reread them."""
        lines = [f"{a} {name}" for name, addresses in records.items() for a in addresses]
        self.hosts.write_text("\n".join(lines) + "\n")
        # Names dropped since the last set are waited for too (to answer nothing): a set
        # that only removes records would otherwise return before dnsmasq reread them.
        expected = {name: list(records.get(name, ())) for name in self._names | set(records)}
        self._names |= set(records)
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)
            self._wait_for(lambda: self._answers(expected))

    def set_srv(self, records: Mapping[str, Sequence[tuple[str, int]]]) -> None:
        """Replace the SRV records ({name: [(target, port), ...]}); restarts a running server."""
        lines = [
            f"srv-host={name},{target},{port}"
            for name, entries in records.items()
            for target, port in entries
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        if self.proc is not None:
            self.stop()
            self.start()

    def start(self) -> None:
        assert self.proc is None
        args = [
            self.binary,
            "--no-daemon",
            "--keep-in-foreground",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            f"--conf-file={self.conf}",
            f"--addn-hosts={self.hosts}",
            f"--local-ttl={TTL}",
            # Answer NXDOMAIN/NODATA for our domain instead of REFUSED.
            f"--local=/{DOMAIN}/",
            "--log-facility=-",
            "--log-queries",  # the log shows which lookups were made (see ``queries``)
            # Stay the user we are: dropping to "nobody" would lose read access to the
            # test's private temp folder, and so the SIGHUP reread.
            f"--user={getpass.getuser()}",
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_for(self._responding)

    def queries(self, rdtype: str, name: str) -> int:
        """How many ``rdtype`` queries for ``name`` this server has logged."""
        needle = f"query[{rdtype}] {name.rstrip('.')} "
        return sum(needle in line for line in self.log.read_text(errors="replace").splitlines())

    def stop(self) -> None:
        """Terminate our process by its PID and wait for it (the 'server gone' case)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def resolver(self, lifetime: float = 0.5) -> dns.resolver.Resolver:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", self.port)]
        resolver.lifetime = lifetime
        return resolver

    def _responding(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {self.log.read_text()[-2000:]}")
        try:
            # A short lifetime: a query sent before dnsmasq binds is lost, not refused,
            # and waiting the full half second for it made every start cost that much.
            self.resolver(lifetime=0.05).resolve(f"probe.{DOMAIN}.", "A", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return True
        except dns.exception.DNSException:
            return False
        return True

    def _answers(self, records: Mapping[str, Sequence[str]]) -> bool:
        for name, addresses in records.items():
            want = sorted(a for a in addresses if ":" not in a)
            try:
                answer = self.resolver().resolve(name, "A", raise_on_no_answer=False)
                got = sorted(r.address for r in answer.rrset or ())
            except dns.resolver.NXDOMAIN:
                got = []
            if got != want:
                return False
        return True

    @staticmethod
    def _wait_for(condition: object, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():  # type: ignore[operator]
                return
            time.sleep(0.02)
        raise TimeoutError("dnsmasq did not reach the expected state")

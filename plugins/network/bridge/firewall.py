"""iptables rules for bridge networks, in skiff's own chains.

The machine's ``iptables`` is the nf_tables flavour; skiff drives it through
the ``iptables``/``iptables-restore`` commands so that rules look and behave
exactly like Docker's (``iptables-save`` shows them, other tools coexist).

Chains, as Docker's with SKIFF for DOCKER:

* nat ``SKIFF``: DNAT of published ports; PREROUTING and OUTPUT jump to it
  for local destinations (OUTPUT too, so that ``127.0.0.1:PORT`` on the
  host reaches the container: the bridge gets ``route_localnet`` and a
  MASQUERADE of locally sourced traffic, Docker's ``userland-proxy: false``).
* filter ``SKIFF``: ACCEPT of published ports towards the container.
* filter ``SKIFF-ISOLATION-STAGE-1/2``: traffic from one skiff bridge to
  another is dropped.
* filter ``SKIFF-USER``: left to the administrator, jumped to first.

What keeps the outside out (docs/security-firewall.md has the why of each):

* filter FORWARD, per bridge, a final DROP of whatever comes from elsewhere
  towards the bridge and was not ACCEPTed by a published port or a reply
  (unpublished ports stay closed to hosts that route to the subnet); when
  skiff turns ``ip_forward`` on it sets the FORWARD policy to DROP, as dockerd
  (daemon.json ``ip-forward-no-drop`` keeps it).
* raw PREROUTING, per bridge, a DROP of packets for the bridge's subnet that
  did not come in through the bridge ("direct routing": a neighbour must use
  the published host port, not the container's address); per port published
  on a loopback address, a DROP of that port arriving on anything but ``lo``
  (a spoofed 127.0.0.1 destination would otherwise be DNATed, moby#41872).
* filter INPUT, per bridge, the guard kube-proxy added for CVE-2020-8558: a
  container's packet for 127.0.0.0/8 is dropped unless it answers the host.
  ``route_localnet`` is on only while the bridge has a port published on a
  loopback or unspecified address (the driver's business).

Every rule skiff adds carries a comment ``skiff:<bridge>``, so the rules of a
bridge can be found again after a crash and removed before they are rebuilt.
The shared chains are removed when the last daemon using them removes its
last rule (several test daemons share one network namespace).
"""

from __future__ import annotations

import ipaddress
import shlex
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence

import structlog

log = structlog.get_logger("skiff.network.firewall")

NAT_CHAIN = "SKIFF"
FILTER_CHAIN = "SKIFF"
ISO1 = "SKIFF-ISOLATION-STAGE-1"
ISO2 = "SKIFF-ISOLATION-STAGE-2"
USER = "SKIFF-USER"

Rule = tuple[str, str, list[str]]  # (table, chain, match/target arguments)

#: Chains where skiff's rules go first, ahead of rules of others: the isolation
#: stages, and the drops that must win over an administrator's ACCEPT.
INSERTED = frozenset({("filter", ISO1), ("filter", ISO2), ("raw", "PREROUTING"),
                      ("filter", "INPUT")})
LOOPBACK = "127.0.0.0/8"
#: the chains every bridge network's rules use, shared by the daemons of a namespace
SHARED_CHAINS = (("nat", NAT_CHAIN), ("filter", FILTER_CHAIN), ("filter", ISO1),
                 ("filter", ISO2), ("filter", USER))
#: seconds a save is used again (the start's networks and reconciliation)
SAVE_FRESH = 2.0


class FirewallError(Exception):
    """An iptables command failed."""


def _run(args: Sequence[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), input=input, capture_output=True, text=True)


class Firewall:
    """The rules of one daemon's bridge networks; no-op when ``enabled`` is false.

    ``family`` 6 drives ``ip6tables`` (same chains, same scheme) for the
    networks' IPv6 subnets.
    """

    def __init__(self, enabled: bool, family: int = 4) -> None:
        self.enabled = enabled
        self.family = family
        self._tool = "ip6tables" if family == 6 else "iptables"
        self._lock = threading.Lock()
        self._ready = False
        #: (when, text) of the last ``-save``, dropped by any change made here
        self._saved: tuple[float, str] | None = None

    def _save(self, fresh: bool = False) -> str:
        """The tables as ``<tool>-save`` prints them; a save taken less than
        ``SAVE_FRESH`` ago, with no change made here since, is used again (the
        start reads the tables for each network and then for the reconciliation:
        one process instead of several)."""
        now = time.monotonic()
        if not fresh and self._saved is not None and now - self._saved[0] < SAVE_FRESH:
            return self._saved[1]
        text = _run([f"{self._tool}-save"]).stdout
        self._saved = (now, text)
        return text

    def _changed(self) -> None:
        self._saved = None

    # -- shared chains ---------------------------------------------------------

    def _ensure_chains(self) -> str:
        """The shared chains and the jumps to them, checked against one save
        (a command per chain and jump, nine processes, was most of a
        restart's firewall time when they were all there).  Returns what the
        caller's restore must do first: the RETURN of each chain made here
        and the jumps to it (a chain that did not exist has none)."""
        if self._ready:
            return ""
        chains, lines = _parse(self._save())
        saved_rules = {_canon_saved(t, line) for t, line in lines if "skiff:" not in line}
        made: set[tuple[str, str]] = set()
        for table, chain in SHARED_CHAINS:
            if (table, chain) in chains:
                continue
            self._changed()
            # -N, not a chain line in the restore: declaring a chain another
            # daemon just made would flush that daemon's rules from it
            if _run([self._tool, "-t", table, "-N", chain]).returncode == 0:
                made.add((table, chain))
        returns: list[Rule] = [(t, c, ["-j", "RETURN"]) for t, c in sorted(made)
                               if c in (ISO1, ISO2, USER)]
        jumps: list[Rule] = []
        for table, chain, spec in self._jumps():
            if (table, spec[-1]) in made:
                jumps.append((table, chain, spec))
            elif _canon(table, chain, spec) in saved_rules:
                continue
            # not found as saved: asked of iptables itself, which knows its own spelling
            elif _run([self._tool, "-t", table, "-C", chain, *spec]).returncode != 0:
                self._changed()
                _run([self._tool, "-t", table, "-I", chain, "1", *spec])
        self._ready = True
        return self._script(returns, "-A") + self._script(jumps, "-I")

    def _jumps(self) -> list[Rule]:
        # IPv6: ::1 is left out of the host's own DNAT, which cannot work for
        # it (see proxy); the driver's proxy listens there instead
        not_lo = ["!", "-d", "::1/128"] if self.family == 6 else []
        return [
            ("nat", "PREROUTING", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", NAT_CHAIN]),
            ("nat", "OUTPUT", [*not_lo, "-m", "addrtype", "--dst-type", "LOCAL",
                               "-j", NAT_CHAIN]),
            ("filter", "FORWARD", ["-j", ISO1]),
            ("filter", "FORWARD", ["-j", USER]),
        ]

    def _drop_chains_if_unused(self) -> None:
        """Remove the shared chains when no skiff rule is left in any of them."""
        save = self._save(fresh=True)  # another daemon of the namespace may use them
        if "skiff:" in save:
            return
        self._changed()
        for table, chain, spec in self._jumps():
            while _run([self._tool, "-t", table, "-D", chain, *spec]).returncode == 0:
                pass
        for table, chain in SHARED_CHAINS:
            _run([self._tool, "-t", table, "-F", chain])
            _run([self._tool, "-t", table, "-X", chain])
        self._ready = False

    # -- batches -----------------------------------------------------------------

    @staticmethod
    def _script(rules: Iterable[Rule], op: str) -> str:
        by_table: dict[str, list[str]] = {}
        for table, chain, spec in rules:
            by_table.setdefault(table, []).append(
                " ".join([op, chain, *(_quote(a) for a in spec)]))
        out = []
        for table, lines in by_table.items():
            out += [f"*{table}", *lines, "COMMIT"]
        return "\n".join(out) + "\n"

    def add(self, rules: list[Rule]) -> None:
        """Add ``rules`` in one ``iptables-restore`` transaction (all or nothing)."""
        if not self.enabled or not rules:
            return
        with self._lock:
            first = self._ensure_chains()
            inserts = [r for r in rules if (r[0], r[1]) in INSERTED]
            appends = [r for r in rules if (r[0], r[1]) not in INSERTED]
            script = self._script(inserts, "-I") + self._script(appends, "-A")
            self._changed()
            res = _run([f"{self._tool}-restore", "--noflush"], input=first + script)
            if res.returncode != 0:
                # Another daemon in this namespace may have dropped the shared
                # chains after its last network went: make them again, once.
                self._ready = False
                first = self._ensure_chains()
                res = _run([f"{self._tool}-restore", "--noflush"], input=first + script)
            if res.returncode != 0:
                raise FirewallError(
                    f"{self._tool}-restore failed: {res.stderr.strip()}\n{script}")

    def delete(self, rules: list[Rule]) -> None:
        """Delete ``rules``; missing ones are ignored (idempotent)."""
        if not self.enabled or not rules:
            return
        with self._lock:
            self._changed()
            res = _run([f"{self._tool}-restore", "--noflush"], input=self._script(rules, "-D"))
            if res.returncode != 0:  # some rule was already gone: go one by one
                for table, chain, spec in rules:
                    _run([self._tool, "-t", table, "-D", chain, *spec])

    def forward_policy_drop(self) -> None:
        """Set the filter FORWARD policy to DROP (dockerd does it when it enables forwarding).

        A host that did not route before must not start routing for its
        neighbours because containers need forwarding: only what skiff's
        rules ACCEPT is forwarded.
        """
        if not self.enabled:
            return
        with self._lock:
            self._changed()
            res = _run([self._tool, "-t", "filter", "-P", "FORWARD", "DROP"])
        if res.returncode != 0:
            raise FirewallError(f"setting the FORWARD policy to DROP failed: {res.stderr.strip()}")
        log.info("firewall.forward_policy_drop",
                 reason="ip_forward was off; skiff turned it on (ip-forward-no-drop keeps ACCEPT)")

    def tags(self) -> set[str]:
        """The ``<tag>`` of every ``skiff:<tag>`` comment in the tables."""
        if not self.enabled:
            return set()
        found: set[str] = set()
        with self._lock:
            for line in self._save().splitlines():
                if line.startswith("-A ") and "skiff:" in line:
                    found.update(a[len("skiff:"):] for a in shlex.split(line[3:])
                                 if a.startswith("skiff:"))
        return found

    def purge(self, tag: str, drop_chains: bool = False) -> None:
        """Remove every rule commented ``skiff:<tag>`` (after a crash, or at shutdown)."""
        if not self.enabled:
            return
        with self._lock:
            self._purge(tag, self._save(fresh=True))
            if drop_chains:
                self._drop_chains_if_unused()

    def _purge(self, tag: str, saved: str) -> None:
        marker = f"skiff:{tag}"
        table = ""
        doomed: list[list[str]] = []
        script: dict[str, list[str]] = {}
        for line in saved.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A ") and marker in line:
                args = shlex.split(line[3:])
                if marker in args:  # not a longer bridge name with this prefix
                    doomed.append([self._tool, "-t", table, "-D", *args])
                    # as saved, so as restore reads it
                    script.setdefault(table, []).append("-D " + line[3:])
        if not doomed:
            return
        self._changed()
        # one transaction (a command per rule costs a process each: a
        # network's dozen rules were a quarter of a second of the start);
        # one by one only if a rule went meanwhile
        batch = "".join(f"*{t}\n" + "\n".join(lines) + "\nCOMMIT\n"
                        for t, lines in script.items())
        if _run([f"{self._tool}-restore", "--noflush"], input=batch).returncode != 0:
            for cmd in doomed:
                _run(cmd)

    def replace(self, tag: str, rules: list[Rule]) -> None:
        """Make ``rules`` the rules tagged ``skiff:<tag>``: those of an earlier
        life (a crash) go before the new ones come.  When the tables already
        hold exactly these, on top where they go first, with the shared chains
        (a restart with its state kept), one save is all it costs."""
        if not self.enabled:
            return
        with self._lock:
            saved = self._save()
            chains, lines = _parse(saved)
            jumps = {_canon(t, c, spec) for t, c, spec in self._jumps()}
            if all(c in chains for c in SHARED_CHAINS) and jumps <= {
                    _canon_saved(t, line) for t, line in lines if "skiff:" not in line}:
                self._ready = True  # the purge below takes rules, never chains
                if self._in_place(lines, tag, rules):
                    return
            self._purge(tag, saved)
        self.add(rules)

    @staticmethod
    def _in_place(lines: list[tuple[str, str]], tag: str, rules: list[Rule]) -> bool:
        marker = f"skiff:{tag}"
        have = sorted(_canon_saved(t, line) for t, line in lines
                      if marker in line and marker in shlex.split(line))
        if have != sorted(_canon(t, c, spec) for t, c, spec in rules):
            return False  # missing, changed, or with an endpoint's rules
        # the rules that go first are still ahead of everyone else's
        for table, chain in INSERTED:
            prefix = f"-A {chain} "
            seen_foreign = False
            for t, line in lines:
                if t != table or not line.startswith(prefix):
                    continue
                if "skiff:" not in line:
                    seen_foreign = True
                elif seen_foreign and marker in line and marker in shlex.split(line):
                    return False
        return True


#: the options iptables prints in an order of its own (source, destination,
#: interfaces, protocol), whatever the order they were given in
_BASIC = frozenset({"-s", "-d", "-i", "-o", "-p"})

Canon = tuple[str, str, tuple[tuple[bool, str, str], ...], tuple[str, ...]]


def _canon(table: str, chain: str, spec: Sequence[str]) -> Canon:
    """A rule in a form that compares equal to its ``-save`` line's: the
    basic options as a set, the matches and the target in their order."""
    basic: list[tuple[bool, str, str]] = []
    i, negated = 0, False
    while i < len(spec):
        if spec[i] == "!" and i + 1 < len(spec) and spec[i + 1] in _BASIC:
            negated = True
            i += 1
            continue
        if spec[i] in _BASIC and i + 1 < len(spec):
            basic.append((negated, spec[i], spec[i + 1]))
            negated = False
            i += 2
            continue
        break
    return table, chain, tuple(sorted(basic)), tuple(spec[i:])


def _canon_saved(table: str, line: str) -> Canon:
    args = shlex.split(line)  # "-A", chain, spec...
    return _canon(table, args[1], args[2:])


def _parse(saved: str) -> tuple[set[tuple[str, str]], list[tuple[str, str]]]:
    """The (table, chain) pairs and (table, ``-A`` line) rules of a save."""
    chains: set[tuple[str, str]] = set()
    lines: list[tuple[str, str]] = []
    table = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            chains.add((table, line[1:].split(" ", 1)[0]))
        elif line.startswith("-A "):
            lines.append((table, line))
    return chains, lines


def _quote(arg: str) -> str:
    return f'"{arg}"' if (" " in arg or not arg) else arg


def tag(bridge: str) -> list[str]:
    return ["-m", "comment", "--comment", f"skiff:{bridge}"]


def network_rules(bridge: str, subnet: str, icc: bool, internal: bool = False) -> list[Rule]:
    """The rules of one bridge network (Docker's, with SKIFF chains, and the guards)."""
    t = tag(bridge)
    rules: list[Rule] = []
    if not internal:
        rules.append(("nat", "POSTROUTING", ["-s", subnet, "!", "-o", bridge, *t,
                                             "-j", "MASQUERADE"]))
    rules += [
        # 127.0.0.1:PORT from the host (route_localnet) and hairpin through a
        # published port: the reply must come back through this host.
        ("nat", "POSTROUTING", ["-o", bridge, "-m", "addrtype", "--src-type", "LOCAL", *t,
                                "-j", "MASQUERADE"]),
        ("nat", "POSTROUTING", ["-s", subnet, "-o", bridge, "-m", "conntrack", "--ctstate",
                                "DNAT", *t, "-j", "MASQUERADE"]),
        # Direct routing: a neighbour that routes the subnet through this host
        # reaches containers only through published host ports (those are
        # DNATed after this table, so they still match the host's address
        # here).  The host's own address on the bridge stays reachable.
        ("raw", "PREROUTING", ["-d", subnet, "!", "-i", bridge, "-m", "addrtype", "!",
                               "--dst-type", "LOCAL", *t, "-j", "DROP"]),
        # CVE-2020-8558: with route_localnet on the bridge, a container could
        # send to the host's 127.0.0.1 services; only answers to the host pass.
        ("filter", "INPUT", ["-i", bridge, "-d", LOOPBACK, "-m", "conntrack", "!",
                             "--ctstate", "RELATED,ESTABLISHED,DNAT", *t, "-j", "DROP"]),
        ("filter", ISO1, ["-i", bridge, "!", "-o", bridge, *t, "-j", ISO2]),
        ("filter", ISO2, ["-o", bridge, *t, "-j", "DROP"]),
        ("filter", "FORWARD", ["-o", bridge, "-m", "conntrack", "--ctstate",
                               "RELATED,ESTABLISHED", *t, "-j", "ACCEPT"]),
        ("filter", "FORWARD", ["-o", bridge, *t, "-j", FILTER_CHAIN]),
        # The final drop: from elsewhere to the bridge, only what SKIFF
        # accepted (published ports, links) passes, whatever the policy.
        ("filter", "FORWARD", ["!", "-i", bridge, "-o", bridge, *t, "-j", "DROP"]),
        ("filter", "FORWARD", ["-i", bridge, "-o", bridge, *t,
                               "-j", "ACCEPT" if icc else "DROP"]),
        # Out of the bridge: anywhere, or, for an internal network, nowhere
        # (a container able to change its routes must not route around it).
        ("filter", "FORWARD", ["-i", bridge, "!", "-o", bridge, *t,
                               "-j", "DROP" if internal else "ACCEPT"]),
    ]
    return rules


def publishes_on_loopback(host_ip: str) -> bool:
    """Whether a port published on ``host_ip`` answers on the host's 127.0.0.1."""
    if host_ip in ("", "0.0.0.0"):
        return True
    try:
        return ipaddress.IPv4Address(host_ip).is_loopback
    except ValueError:
        return False


def port_rules(bridge: str, container_ip: str, proto: str, container_port: int,
               host_ip: str, host_port: int) -> list[Rule]:
    """DNAT and ACCEPT for one published port."""
    t = tag(bridge)
    dst = [] if host_ip in ("", "0.0.0.0") else ["-d", host_ip]
    rules: list[Rule] = []
    if host_ip not in ("", "0.0.0.0") and publishes_on_loopback(host_ip):
        # moby#41872: a neighbour's packet for 127.0.0.1:PORT (spoofed, sent to
        # this host's MAC) would be DNATed to the container before the kernel
        # could call it a martian; only the host itself may use this port.
        rules.append(("raw", "PREROUTING", ["-d", f"{host_ip}/32", "!", "-i", "lo",
                                            "-p", proto, "-m", proto, "--dport",
                                            str(host_port), *t, "-j", "DROP"]))
    rules += [
        ("nat", NAT_CHAIN, [*dst, "-p", proto, "-m", proto, "--dport", str(host_port), *t,
                            "-j", "DNAT", "--to-destination",
                            f"{container_ip}:{container_port}"]),
        ("filter", FILTER_CHAIN, ["-d", f"{container_ip}/32", "!", "-i", bridge, "-o", bridge,
                                  "-p", proto, "-m", proto, "--dport", str(container_port), *t,
                                  "-j", "ACCEPT"]),
        ("nat", "POSTROUTING", ["-s", f"{container_ip}/32", "-d", f"{container_ip}/32",
                                "-p", proto, "-m", proto, "--dport", str(container_port), *t,
                                "-j", "MASQUERADE"]),
    ]
    return rules


def link_rules(bridge: str, src_ip: str, dst_ip: str, proto: str, port: int) -> list[Rule]:
    """With ``icc: false``, let a linking container reach one port of the linked one."""
    t = tag(bridge)
    return [
        ("filter", FILTER_CHAIN, ["-i", bridge, "-o", bridge, "-s", src_ip, "-d", dst_ip,
                                  "-p", proto, "-m", proto, "--dport", str(port), *t,
                                  "-j", "ACCEPT"]),
        ("filter", FILTER_CHAIN, ["-i", bridge, "-o", bridge, "-s", dst_ip, "-d", src_ip,
                                  "-p", proto, "-m", proto, "--sport", str(port), *t,
                                  "-j", "ACCEPT"]),
    ]


# -- IPv6 (ip6tables) -------------------------------------------------------------
#
# The same scheme without what IPv6 has no use for: there is no route_localnet
# (the kernel never routes ::1 off ``lo``, so ports published on [::1] go
# through the driver's proxy, see ``proxy``), hence no INPUT guard for it.


def network_rules6(bridge: str, subnet: str, icc: bool, internal: bool = False) -> list[Rule]:
    """The ip6tables rules of one bridge network's IPv6 subnet."""
    return [rule for rule in network_rules(bridge, subnet, icc, internal)
            if rule[1] != "INPUT"]


def port_rules6(bridge: str, container_ip: str, proto: str, container_port: int,
                host_ip: str, host_port: int) -> list[Rule]:
    """DNAT and ACCEPT for one port published on an IPv6 host address."""
    t = tag(bridge)
    dst = [] if host_ip in ("", "::") else ["-d", host_ip]
    return [
        ("nat", NAT_CHAIN, [*dst, "-p", proto, "-m", proto, "--dport", str(host_port), *t,
                            "-j", "DNAT", "--to-destination",
                            f"[{container_ip}]:{container_port}"]),
        ("filter", FILTER_CHAIN, ["-d", f"{container_ip}/128", "!", "-i", bridge, "-o", bridge,
                                  "-p", proto, "-m", proto, "--dport", str(container_port), *t,
                                  "-j", "ACCEPT"]),
        ("nat", "POSTROUTING", ["-s", f"{container_ip}/128", "-d", f"{container_ip}/128",
                                "-p", proto, "-m", proto, "--dport", str(container_port), *t,
                                "-j", "MASQUERADE"]),
    ]

"""The bridge driver's start path (issue 21: skiffd's start-up time), in a
network namespace of its own: the hand-packed rtnetlink of ``links`` makes the
same bridge pyroute2 made, and a restart that finds a network's rules exactly
in place costs one ``iptables-save`` and leaves them as they are, while rules
that differ in any way (an endpoint's left by a crash, a foreign rule ahead of
those that go first) are purged and made again."""

from __future__ import annotations

import os
import subprocess
import sys

_SCRIPT = r"""
import socket, subprocess
from skiff.plugins.network.bridge import firewall as fw, leftovers, links

calls = []
real = fw._run
def counted(args, input=None):
    calls.append(args[0] if args[0].endswith(("-save", "-restore")) else " ".join(args[:2]))
    return real(args, input)
fw._run = counted

with links.Rtnl() as rtnl:
    rtnl.add_bridge("tb0")
    i = links.index_of("tb0")
    rtnl.add_address(i, "172.30.0.1", 16)
    rtnl.add_address(i, "fd00:1::1", 64, family=socket.AF_INET6, flags=0x02)
    rtnl.set_up(i, alias=leftovers.owner_mark("/dr"))
    print("v4", sorted(rtnl.addresses(i, socket.AF_INET)))
    print("v6", "fd00:1::1" in rtnl.addresses(i, socket.AF_INET6))
    (tb0,) = [link for link in rtnl.links() if link.name == "tb0"]
    print("alias", tb0.alias, tb0.master, tb0.netnsid)
    try:
        rtnl.add_bridge("tb0")
    except links.NetlinkError as exc:
        print("again", exc.errno == 17)
shown = subprocess.run(["ip", "-d", "addr", "show", "tb0"], capture_output=True, text=True).stdout
print("shown", "UP" in shown.split(">")[0], "alias skiff /dr" in shown,
      "inet 172.30.0.1/16" in shown, "nodad" in shown, "bridge forward_delay" in shown)

rules = fw.network_rules("tb0", "172.30.0.0/16", True)
def ours():
    return sorted(line for line in real(["iptables-save"]).stdout.splitlines()
                  if "skiff:tb0" in line)

fw.Firewall(True).replace("tb0", rules)
made = ours()
print("made", len(made) == len(rules), calls.count("iptables-restore"))
shared = [line for line in real(["iptables-save"]).stdout.splitlines()
          if line.startswith("-A ") and "skiff:" not in line]
print("shared", shared)
calls.clear()
again = fw.Firewall(True)
again.replace("tb0", rules)
print("restart", calls, ours() == made)
calls.clear()
print("tags", again.tags(), calls)

again.add(fw.port_rules("tb0", "172.30.0.2", "tcp", 80, "", 8080))
calls.clear()
fw.Firewall(True).replace("tb0", rules)
print("endpoint left", "iptables-restore" in calls, ours() == made)

real(["iptables", "-I", "INPUT", "1", "-j", "ACCEPT"])
fw.Firewall(True).replace("tb0", rules)
print("on top", real(["iptables", "-S", "INPUT"]).stdout.splitlines()[1].endswith("DROP"))

print("reconcile", leftovers.reconcile("/dr", set(), [fw.Firewall(True)]))
print("gone", links.index_of("tb0"), ours())
import sys
print("pyroute2", "pyroute2" in sys.modules)
"""


def test_bridge_plumbing_and_rules_kept_on_restart() -> None:
    res = subprocess.run(["unshare", "--net", "sh", "-c",
                          f"ip link set lo up; {sys.executable} -c '{_SCRIPT}'"],
                         capture_output=True, text=True, timeout=60, env={**os.environ})
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "v4 ['172.30.0.1']",
        "v6 True",
        "alias skiff /dr None None",
        "again True",
        "shown True True True True True",
        "made True 1",
        "shared ['-A FORWARD -j SKIFF-USER', '-A FORWARD -j SKIFF-ISOLATION-STAGE-1', "
        "'-A SKIFF-ISOLATION-STAGE-1 -j RETURN', '-A SKIFF-ISOLATION-STAGE-2 -j RETURN', "
        "'-A SKIFF-USER -j RETURN', '-A PREROUTING -m addrtype --dst-type LOCAL -j SKIFF', "
        "'-A OUTPUT -m addrtype --dst-type LOCAL -j SKIFF']",
        "restart ['iptables-save'] True",
        "tags {'tb0'} []",
        "endpoint left True True",
        "on top True",
        "reconcile ['bridge tb0', 'rules skiff:tb0']",
        "gone None []",
        "pyroute2 False",
    ], res.stdout + res.stderr

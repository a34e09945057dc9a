"""Reconciling a running switch with a desired state: the plan, and carrying it out.

The plan is built over the model's spec objects without knowing their fields:
items are matched by identity (a network or port by name, a peer by network
and remote, a static entry by network and MAC) and compared whole through
to_dict(), so a field added to a spec takes part without a change here. An
item whose spec differs is removed and added again, along with everything
that depends on it (a re-created network takes its ports, peers and static
entries with it); a port is changed in place instead when only fields it can
change live differ (port_change()).

[switch] settings are fixed for the life of vswitchd: a difference is named
in the plan as needing a restart, never applied and never silently dropped.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from .config import SECTIONS, check_peers
from .errors import InvalidArgument, VswitchError
from .model import POLICY_KEYS, TRUNK_KEYS, DesiredState, PortSpec, PortUpdate, SwitchSettings
from .switch import Switch

log = logging.getLogger("vswitch.reconcile")

# What identifies an item of each section, whatever else it holds.
IDENTITY: dict[str, tuple[str, ...]] = {
    "network": ("name",),
    "port": ("name",),
    "peer": ("network", "remote"),
    "fdb": ("network", "mac"),
}
# Port fields a live port can change without being re-created (its TAP deleted and
# made again). An access port that becomes a trunk port (or back) changes its
# network too: that re-creates it.
PORT_FIELDS_IN_PLACE = frozenset({"ip", "ips", "routes", "mtu", *POLICY_KEYS, *TRUNK_KEYS})


def changed_fields(old: Any, new: Any) -> list[str]:
    a, b = old.to_dict(), new.to_dict()
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def port_change(old: PortSpec, new: PortSpec) -> str:
    """How a changed port is brought to its new spec: "update" in place when only
    fields a live port can change differ, else "recreate"."""
    # An MTU taken out of the file means the network's default, which only a new port gets.
    a, b = old.to_dict(), new.to_dict()
    if "mtu" in a and "mtu" not in b:
        return "recreate"
    return "update" if set(changed_fields(old, new)) <= PORT_FIELDS_IN_PLACE else "recreate"


def update_port_in_place(switch: Switch, old: PortSpec, new: PortSpec) -> None:
    """Carry out an "update" that port_change() allowed, as PATCH /v1/ports/NAME does."""
    trunk = {"trunk": new.trunk, "native": new.native, "native_given": True} if new.is_trunk else {}
    switch.set_port(new.name, PortUpdate(ips=new.ips, routes=new.routes, mtu=new.mtu, policy=new.policy.view(),  # type: ignore[union-attr]
                                         **trunk))


def _key(kind: str, spec: Any) -> tuple[Any, ...]:
    return tuple(getattr(spec, f) for f in IDENTITY[kind])


def _label(kind: str, spec: Any) -> str:
    return f"{kind} {'/'.join(str(v) for v in _key(kind, spec))}"


@dataclass
class Step:
    op: str  # add, remove, recreate, update
    kind: str  # network, port, peer, fdb
    old: Any = None
    new: Any = None
    changed: list[str] = field(default_factory=list)
    because: str | None = None  # a re-creation forced by what it depends on

    @property
    def label(self) -> str:
        return _label(self.kind, self.new if self.new is not None else self.old)

    def describe(self) -> str:
        text = {"add": "add", "remove": "remove", "recreate": "re-create", "update": "change"}[self.op] + " " + self.label
        if self.changed:
            text += f" ({', '.join(self.changed)} changed)"
        if self.because:
            text += f" ({self.because})"
        return text

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"op": self.op, "kind": self.kind, "item": self.label.split(" ", 1)[1],
                               "description": self.describe()}
        if self.old is not None:
            doc["old"] = self.old.to_dict()
        if self.new is not None:
            doc["new"] = self.new.to_dict()
        if self.changed:
            doc["changed"] = self.changed
        if self.because:
            doc["because"] = self.because
        return doc


@dataclass
class Plan:
    changes: list[Step]  # each change once, in the order of its first action
    actions: list[tuple[bool, Step]]  # (removing, step) in the order they are carried out
    restart_needed: list[dict[str, Any]]  # [switch] keys whose file value differs from the running one

    def to_dict(self) -> dict[str, Any]:
        return {"changes": [s.to_dict() for s in self.changes], "restart_needed": self.restart_needed}

    def describe(self) -> list[str]:
        lines = [s.describe() for s in self.changes]
        lines += [f"needs a restart: switch.{r['key']} = {r['file']!r} (running with {r['running']!r})"
                  for r in self.restart_needed]
        return lines


def _index(kind: str, specs: list[Any]) -> dict[tuple[Any, ...], Any]:
    return {_key(kind, s): s for s in specs}


def _depends(spec: Any, networks: set[str], ports: set[str], peers: set[tuple[str, str]]) -> str | None:
    """Why an item must be re-created with what it refers to, or None."""
    network = getattr(spec, "network", None)
    for net in spec.networks if isinstance(spec, PortSpec) else (network,):
        if net in networks:
            return f"network {net} is re-created"
    port = getattr(spec, "port", None)
    if port is not None and port in ports:
        return f"port {port} is re-created"
    peer = getattr(spec, "peer", None)
    if peer is not None and (network, peer) in peers:
        return f"peer {peer} is re-created"
    return None


def make_plan(current: DesiredState, desired: DesiredState, running: SwitchSettings, wanted: SwitchSettings) -> Plan:
    """The changes that turn `current` into `desired`, in the order they can be made:
    removals from the leaves (static entries) to the roots (networks), then additions back."""
    removals: dict[str, list[Step]] = {k: [] for k in SECTIONS}
    additions: dict[str, list[Step]] = {k: [] for k in SECTIONS}
    # What goes away (removed or re-created), by identity, for the items that depend on it.
    gone: dict[str, set[Any]] = {"network": set(), "port": set(), "peer": set()}
    for kind, attr in SECTIONS.items():
        old, new = _index(kind, getattr(current, attr)), _index(kind, getattr(desired, attr))
        for key, spec in old.items():
            target = new.get(key)
            because = _depends(spec, gone["network"], gone["port"], gone["peer"])
            if target is None:
                removals[kind].append(Step("remove", kind, old=spec))
            elif because is None and target == spec:
                continue
            else:
                changed = changed_fields(spec, target)
                if kind == "port" and because is None and port_change(spec, target) == "update":
                    additions[kind].append(Step("update", kind, spec, target, changed))
                    continue
                step = Step("recreate", kind, spec, target, changed, because if not changed else None)
                removals[kind].append(step)
                additions[kind].append(step)
            if kind in gone:
                gone[kind].add(key if kind == "peer" else key[0])
        for key, spec in new.items():
            if key not in old:
                additions[kind].append(Step("add", kind, new=spec))
    kinds = list(SECTIONS)
    actions = ([(True, s) for k in reversed(kinds) for s in removals[k]]
               + [(False, s) for k in kinds for s in additions[k]])
    changes = list({id(s): s for _, s in actions}.values())
    return Plan(changes, actions, restart_differences(running, wanted))


def restart_differences(running: SwitchSettings, wanted: SwitchSettings) -> list[dict[str, Any]]:
    now, then = dataclasses.asdict(running), dataclasses.asdict(wanted)
    return [{"key": k, "running": now[k], "file": then[k]} for k in now if now[k] != then.get(k)]


def _carry_out(switch: Switch, step: Step, removing: bool) -> None:
    spec = step.old if removing else step.new
    if step.op == "update":
        update_port_in_place(switch, step.old, step.new)
    elif step.kind == "network":
        switch.del_network(spec.name) if removing else switch.add_network(spec)
    elif step.kind == "port":
        switch.del_port(spec.name) if removing else switch.add_port(spec)
    elif step.kind == "peer":
        switch.del_peer(spec) if removing else switch.add_peer(spec)
    elif step.kind == "fdb":
        # Static entries go before the ports they point at, which would take them along.
        switch.fdb_del(spec.network, spec.mac) if removing else switch.fdb_add(spec)


def apply(switch: Switch, wanted: SwitchSettings, desired: DesiredState, *, dry_run: bool = False) -> dict[str, Any]:
    """Reconcile the switch with `desired` (already checked: parse_config) and return the plan.

    Peers are checked against the running [switch] settings, the ones they will meet.
    Nothing is changed for a dry run or when a check fails. A change that fails midway
    (e.g. the kernel refuses an interface) stops the rest; what was done stays done
    and saved, and the error says how far it got."""
    try:
        check_peers(switch.settings, desired)
    except InvalidArgument as e:
        note = ("; vtep_ip changes need a restart" if wanted.vtep_ip != switch.settings.vtep_ip else "")
        raise InvalidArgument(f"{e}{note}") from None
    with switch.batch():
        plan = make_plan(switch.desired_state(), desired, switch.settings, wanted)
        result = {"dry_run": dry_run, **plan.to_dict()}
        if dry_run:
            return result
        for n, (removing, step) in enumerate(plan.actions):
            try:
                _carry_out(switch, step, removing)
            except VswitchError as e:
                raise type(e)(f"{'removing' if removing else 'adding'} {step.label} failed: {e}; {n} of "
                              f"{len(plan.actions)} actions were carried out before it and are kept, the rest "
                              f"were not") from None
            result["applied"] = n + 1
    for line in plan.describe():
        log.info("apply: %s", line)
    return result

"""The properties every object the API server accepts must have, for both kinds.

For an accepted object, as stored (pruned, defaulted):
1. the offline pipeline (model parse -> graph -> render, as `roundhouse render`) neither
   crashes nor refuses it;
2. the rendered haproxy.cfg passes the real `haproxy -c` of 2.6 and 3.4 (checked in a
   batch, several configs at once, by check_configs);
3. a change outside server lines changes the structure hash: a timeout and a header value
   in the spec, and any non-server line of the text; a change only in the endpoints
   (server lines) does not.

Shared by tests/unit/test_schema_property.py (objects the offline evaluator accepts)
and tests/integration/test_schema_property.py (objects the real API server accepts).
"""

from __future__ import annotations

import copy
import re
import subprocess
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from roundhouse.graph import ClusterState, ProxyGraph, issued_secret_name
from roundhouse.model import parse_loadbalancer, parse_reverseproxy
from roundhouse.model.cluster import TLSSecret
from roundhouse.model.errors import SpecError
from roundhouse.pipeline import Desired, desired_for_loadbalancer, desired_for_reverseproxy
from roundhouse.placeholder_certificates import write_placeholder_certificates
from roundhouse.render.haproxy import RenderOptions, render_haproxy
from roundhouse.render.structure import config_hash, structure_hash
from tests.unit.cluster_fixtures import endpoint, endpoint_slice, service

Obj = dict[str, Any]

# ------------------------------------------------------------------ known, open

# What the API server accepts but the operator refuses on purpose, each with its reason.
# An object that fails a property in one of these ways is counted, not failed; any other
# failure fails the test with the object that shows it. (The table once held seven defect
# classes of issue 11 while their fixes were on other branches; all are fixed.)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, sub in value.items():
            yield str(key)
            yield from _strings(sub)
    elif isinstance(value, list):
        for sub in value:
            yield from _strings(sub)


def _pcre2_refuses(obj: Obj, failure: str, config: str) -> bool:
    """A RegularExpression match PCRE2 (HAProxy's dialect) does not compile. CEL has no
    PCRE2, so the CRD cannot refuse it; the operator does, with Accepted=False naming the
    field, and never renders it."""
    return "RegularExpression" in _strings(obj["spec"]) and bool(
        re.search(r"regex|pcre|regular expression", failure, re.I))


KnownCheck = Callable[[Obj, str, str], bool]
KNOWN_OPEN: dict[str, KnownCheck] = {
    "a regular expression PCRE2 refuses (refused by the operator, field named)":
        _pcre2_refuses,
}


def known_class(obj: Obj, failure: str, config: str = "") -> str | None:
    """The KNOWN_OPEN class this failure falls in, if any."""
    return next((name for name, check in KNOWN_OPEN.items() if check(obj, failure, config)),
                None)


# ---------------------------------------------------------------------- cluster


def _backends(spec: Obj) -> list[Obj]:
    found = list(spec.get("backends") or [])
    for host in spec.get("hosts") or []:
        for route in host.get("routes") or []:
            found += route.get("backends") or []
    if spec.get("defaultBackend"):
        found.append(spec["defaultBackend"])
    return found


def cluster_for(obj: Obj, subnet: int = 244) -> ClusterState:
    """Every Service the object names exists, each port with a ready, a draining and an
    unready endpoint in 10.<subnet>.0.0/16; every Secret it names (and the issued one)
    exists and is usable. Another subnet moves only the servers' addresses."""
    spec = obj["spec"]
    ports: dict[str, dict[str, int]] = {}
    for be in _backends(spec):
        port = be["port"]
        name = port if isinstance(port, str) else f"p{port}"
        number = port if isinstance(port, int) else 80 + len(ports.get(be["service"], {}))
        ports.setdefault(be["service"], {})[name] = number
    services = {}
    slices = []
    for i, (svc, named) in enumerate(sorted(ports.items())):
        services[svc] = service(svc, tuple(named.items()))
        for j, pname in enumerate(sorted(named)):
            base = f"10.{subnet}.{i % 250}"
            slices.append(endpoint_slice(svc, [
                endpoint(f"{svc}-a", f"{base}.1"),
                endpoint(f"{svc}-b", f"{base}.2", ready=False, serving=True, terminating=True),
                endpoint(f"{svc}-c", f"{base}.3", ready=False),
            ], port=8000 + j, port_name=pname, name=f"{svc}-{j}"))
    names = {issued_secret_name(obj["kind"], obj["metadata"]["name"])}
    names |= {li["tls"]["secretName"] for li in spec.get("listeners") or []
              if (li.get("tls") or {}).get("secretName")}
    names |= {h["tls"]["secretName"] for h in spec.get("hosts") or []
              if (h.get("tls") or {}).get("secretName")}
    secrets = {n: TLSSecret(n, True, True, f"fp-{n}") for n in names}
    ca = (spec.get("upstreamTLS") or {}).get("caSecretName")
    if ca:  # one Secret may be both a serving pair and the upstream CA
        pair = ca in secrets
        secrets[ca] = TLSSecret(ca, pair, pair, f"fp-{ca}" if pair else "", has_ca=True,
                                ca_fingerprint="ca-fp")
    return ClusterState(services, slices, secrets)


def stored(obj: Obj) -> Obj:
    """What the operator reads back: the API server's uid and generation added."""
    out = copy.deepcopy(obj)
    out["metadata"].setdefault("uid", "00000000-0000-0000-0000-000000000000")
    out["metadata"].setdefault("generation", 1)
    return out


def desired(obj: Obj, cluster: ClusterState | None = None) -> Desired:
    """The pure pipeline, as `roundhouse render` runs it; raises SpecError on refusal."""
    cluster = cluster if cluster is not None else cluster_for(obj)
    if obj["kind"] == "LoadBalancer":
        return desired_for_loadbalancer(parse_loadbalancer(obj), cluster)
    return desired_for_reverseproxy(parse_reverseproxy(obj), cluster)


# ------------------------------------------------------------------- properties


@dataclass
class Rendered:
    """One accepted object's config, waiting for the batched `haproxy -c`."""

    obj: Obj
    graph: ProxyGraph
    config: str


class PropertyFailure(AssertionError):
    """A property that failed for an object outside every KNOWN_OPEN class."""


@dataclass
class Tally:
    """What happened to the accepted objects of a run."""

    checked: int = 0
    known: dict[str, int] | None = None
    # The first failure of each known class, for the report.
    first: dict[str, str] | None = None

    def count_known(self, name: str, what: str = "") -> None:
        self.known = self.known or {}
        self.first = self.first or {}
        self.known[name] = self.known.get(name, 0) + 1
        self.first.setdefault(name, what)


def _fail(obj: Obj, what: str, config: str, tally: Tally) -> bool:
    """Raise PropertyFailure unless the failure is a KNOWN_OPEN class (then False)."""
    name = known_class(obj, what, config)
    if name is None:
        raise PropertyFailure(f"{what}\n--- object:\n{yaml.safe_dump(obj, allow_unicode=True)}")
    tally.count_known(name, f"{what}\n--- object:\n{yaml.safe_dump(obj, allow_unicode=True)}")
    return False


def check_object(obj: Obj, tally: Tally) -> Rendered | None:
    """Properties 1 and 3 for one accepted object (as stored); the config for 2."""
    obj = stored(obj)
    try:
        first = desired(obj)
    except SpecError as err:
        _fail(obj, f"the model refused an object the API server accepts: {err}", "", tally)
        return None
    except Exception:
        _fail(obj, f"the pipeline crashed:\n{traceback.format_exc()}", "", tally)
        return None
    config = first.rendered.config
    for problem in _structure_problems(obj, first):
        _fail(obj, problem, config, tally)
        return None
    tally.checked += 1
    return Rendered(obj, first.graph, config)


def _structure_problems(obj: Obj, first: Desired) -> Iterator[str]:
    config = first.rendered.config
    same = desired(obj).rendered.config
    if same != config:
        yield "the same input rendered two different configs"
    # A change only in server lines (endpoint addresses) keeps the structure.
    moved = desired(obj, cluster_for(obj, subnet=245)).rendered
    if moved.structure_hash != first.rendered.structure_hash:
        yield "moving only the endpoints changed the structure hash"
    if re.search(r"^\s*server \S+ 10\.244\.", config, re.M) and \
            moved.config_hash == first.rendered.config_hash:
        yield "moving the endpoints did not change the config"
    # A change in the spec outside server lines changes the structure.
    for path, mutated in _spec_mutations(obj):
        changed = desired(mutated).rendered
        if changed.structure_hash == first.rendered.structure_hash:
            yield f"changing {path} kept the structure hash"
    # Any one non-server line of the text changed changes the structure.
    lines = config.split("\n")
    candidates = [i for i, line in enumerate(lines)
                  if line.strip() and not re.match(r"\s*server\s", line)]
    step = max(1, len(candidates) // 16)
    for i in candidates[::step]:
        edited = "\n".join([*lines[:i], lines[i] + " x", *lines[i + 1:]])
        if structure_hash(edited) == structure_hash(config):
            yield f"editing config line {i + 1} kept the structure hash: {lines[i]!r}"
    if config_hash(config) != first.rendered.config_hash:
        yield "config_hash is not the hash of the config"


def _spec_mutations(obj: Obj) -> Iterator[tuple[str, Obj]]:
    """One non-server value changed at a time: a timeout, then a header value."""
    spec = obj["spec"]
    connect = (spec.get("timeouts") or {}).get("connect", "5s")
    mutated = copy.deepcopy(obj)
    mutated["spec"].setdefault("timeouts", {})["connect"] = "7s" if connect != "7s" else "8s"
    yield "spec.timeouts.connect", mutated
    for h, host in enumerate(spec.get("hosts") or []):
        for r, route in enumerate(host.get("routes") or []):
            if not route.get("backends"):
                continue  # a redirect route has no header changes (the CRD forbids them)
            for side in ("requestHeaders", "responseHeaders"):
                for op in ("set", "add"):
                    values = (route.get(side) or {}).get(op) or {}
                    for name, value in values.items():
                        mutated = copy.deepcopy(obj)
                        target = mutated["spec"]["hosts"][h]["routes"][r][side][op]
                        target[name] = value + "x" if len(value) < 4096 else value[:-1] + (
                            "y" if value[-1] == "x" else "x")
                        yield f"spec.hosts[{h}].routes[{r}].{side}.{op}[{name}]", mutated
                        return  # one header value is enough


# ------------------------------------------------------------------ haproxy -c


def check_configs(rendered: list[Rendered], binaries: tuple[str, ...], workdir: Path,
                  tally: Tally) -> list[str]:
    """`haproxy -c` of every binary on every config, two at a time; the failures (outside
    KNOWN_OPEN), each with its object."""
    jobs = []
    for n, item in enumerate(rendered):
        tmp = workdir / f"cfg-{n}"
        tmp.mkdir(parents=True, exist_ok=True)
        write_placeholder_certificates(
            tmp, [c.file for c in item.graph.certificates if c.kind == "pair"],
            [c.file for c in item.graph.certificates if c.kind == "ca"])
        config = render_haproxy(item.graph, RenderOptions(runtime_dir=str(tmp),
                                                          cert_dir=str(tmp))).config
        (tmp / "haproxy.cfg").write_text(config)
        jobs += [(item, config, binary, tmp / "haproxy.cfg") for binary in binaries]

    def run(job: tuple[Rendered, str, str, Path]) -> tuple[Rendered, str, str, str] | None:
        item, config, binary, path = job
        done = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True,
                              text=True, check=False, timeout=120)
        if done.returncode == 0:
            return None
        return item, config, binary, done.stdout + done.stderr

    failures = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for result in pool.map(run, jobs):
            if result is None:
                continue
            item, config, binary, output = result
            what = f"{binary} -c rejected the config:\n{output}"
            name = known_class(item.obj, what, config)
            if name is not None:
                tally.count_known(name, what)
                continue
            failures.append(f"{what}\n--- object:\n"
                            f"{yaml.safe_dump(item.obj, allow_unicode=True)}")
    return failures

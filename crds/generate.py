"""Write the Roundhouse CRDs (crds/loadbalancers.yaml, crds/reverseproxies.yaml).

The schema is built by roundhouse.model.crd from roundhouse.model.rules, the one
statement of every pattern, enum, bound, default and cross-field rule, which the offline
parser (`roundhouse render/check`) reads too. Edit those modules, not the YAML files;
tests/unit/test_crd_schema.py checks that the files are exactly what this script writes.
After a change, `make manifests` copies the CRDs into the Helm chart and install.yaml.

Usage:  python crds/generate.py          # rewrite the YAML files
        python crds/generate.py --check  # exit 1 when a YAML file is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "operator"))  # without `pip install -e .` too

from roundhouse.model.crd import FILES, render  # noqa: E402


def main(argv: list[str]) -> int:
    stale = []
    for name, build in FILES.items():
        text = render(build())
        path = HERE / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    for name in stale:
        print(f"crds/{name} is out of date: run python crds/generate.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""End-to-end harness, for both cluster modes of tests/e2e (E2E_CLUSTER, modes.py).

Local mode (the default): real HAProxy + agent beside a local control plane, and
network-namespace backends that own the kwok Pods' IPs. These need root (ip netns,
unshare, nsenter):

- netns.py:   one network namespace per backend Pod (its IP, a veth to the host, an
              HTTP server answering with the Pod's name), fully cleaned up.
- proxy.py:   the proxy Pod stand-in: `roundhouse agent` + `haproxy -W` in a private
              mount namespace where /run/roundhouse is a temp dir of ours.

Kubeconfig mode (a real cluster, e.g. kind; no root):

- kube_backends.py: echo backend Pods/Deployments/Services, kubectl port-forward.
- proxy_pod.py:     the real proxy Pod, with proxy.py's inspection methods.

Both:

- modes.py:   E2E_CLUSTER parsing and checks, the local_only / kubeconfig_only marks.
- traffic.py: bounded HTTP clients and a concurrent load generator.
"""

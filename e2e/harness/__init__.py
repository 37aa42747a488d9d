"""End-to-end harness: real HAProxy + agent beside a local control plane, and
network-namespace backends that own the kwok Pods' IPs.

- netns.py:   one network namespace per backend Pod (its IP, a veth to the host, an
              HTTP server answering with the Pod's name), fully cleaned up.
- proxy.py:   the proxy Pod stand-in: `roundhouse agent` + `haproxy -W` in a private
              mount namespace where /run/roundhouse is a temp dir of ours.
- traffic.py: bounded HTTP clients and a concurrent load generator.

Everything here needs root (ip netns, unshare, nsenter).
"""

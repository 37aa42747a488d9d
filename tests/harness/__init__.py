"""Offline checks of everything around the operator: the e2e harness, the kind and real-node
setups, the manifests, the Dockerfile and the CI files (`make test-harness`)."""

"""Pure renderers: ProxyGraph -> haproxy.cfg, the server-state document and Kubernetes objects."""

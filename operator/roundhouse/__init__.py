"""Roundhouse: LoadBalancer and ReverseProxy resources reconciled into HAProxy."""

API_GROUP = "roundhouse.dev"
API_VERSION = "v1alpha1"
__version__ = "0.1.0"

"""Local Kubernetes control plane for Roundhouse integration and e2e tests."""

from .controlplane import (
    BinariesError,
    ControlPlane,
    ControlPlaneError,
    KubectlError,
    locate_binaries,
)

__all__ = ["BinariesError", "ControlPlane", "ControlPlaneError", "KubectlError", "locate_binaries"]

"""Container images of the real-Pods tier, built offline (build.py)."""

"""Tests of the test harness itself (images, nodes): they need root and host tools."""

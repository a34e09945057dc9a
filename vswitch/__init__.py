"""vswitch: a userspace virtual switch and VXLAN tunnel endpoint for containers."""

__version__ = "0.1.0"

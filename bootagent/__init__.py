"""bootagent: a small, fast first-boot provisioning agent for Azure Linux VMs and Arc servers."""

__version__ = "0.1.0"

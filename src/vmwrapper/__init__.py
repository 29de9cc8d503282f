"""vm-wrapper: run HPC batch jobs inside virtual machines."""

__version__ = "0.1.0"

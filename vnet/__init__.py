"""vnet: a virtual network over gRPC."""

__version__ = "0.1.0"

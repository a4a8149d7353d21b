"""The pure core: rules and state with no I/O (no asyncio, grpc, sockets or clocks)."""

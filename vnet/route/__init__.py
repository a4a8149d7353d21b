"""The route: the grpc.aio server, its servicer and the tunnel splices."""

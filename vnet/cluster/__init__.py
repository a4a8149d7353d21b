"""The route cluster: the registry shared by several routes, kept in etcd."""

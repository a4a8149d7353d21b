"""A vnet node: its client of the route, serves, uses, offers and tunnels."""

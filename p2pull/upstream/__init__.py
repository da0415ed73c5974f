"""The upstream registry: the origin that one seed per blob fetches from."""

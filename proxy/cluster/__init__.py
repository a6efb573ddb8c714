"""A cluster of nodes sharing one cache: membership (static, DNS, etcd), ring, peers."""

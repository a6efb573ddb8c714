"""Several Slipstream nodes as one cache: rendezvous ownership over the live members, an
authenticated peer endpoint, and the read path that asks an object's owner before the store."""

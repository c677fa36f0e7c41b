"""lockscope: distributed locks with fencing tokens, and a live view of who holds and waits.

The package has four stages, one sub-package each, in the order data flows:

- :mod:`lockscope.locks` -- the lock mechanisms (database lease, Redis, Redlock, ZooKeeper...);
- :mod:`lockscope.instrumentation` -- the shim that records every lock operation;
- :mod:`lockscope.agent` -- the service that builds the wait-for graph and finds deadlocks;
- :mod:`lockscope.testing` -- real-server fixtures for your own tests.
"""

from lockscope.errors import LockError, LockLost, LockNotAcquired, LockNotOwned

__version__ = "0.1.0"

__all__ = ["LockError", "LockLost", "LockNotAcquired", "LockNotOwned", "__version__"]

"""The backend matrix's session fixtures (tests/backends.py): `server_pool`, `compat`
and one `backend_<name>` per server, e.g. `backend_etcd_3_7_3`."""

from tests.backends import fixtures

globals().update(fixtures())

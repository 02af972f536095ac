"""Talking to etcd and etcd-compatible servers.

Importing the package keeps gRPC's C core off stderr (see grpclog); it has to happen
before anything imports grpc, and every gRPC user in watchdog lives under this package.
"""

from watchdog.etcd.grpclog import quiet_grpc_core

quiet_grpc_core()

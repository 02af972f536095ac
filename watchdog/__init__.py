"""watchdog: watch etcd the way an API gateway fleet depends on it."""

__version__ = "0.1.0"
__all__ = ["__version__"]

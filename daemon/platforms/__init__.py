"""Running as a service: systemd (unit, checks, install, notify) and Windows (service
host, control, install); ``install`` picks the one for this platform."""

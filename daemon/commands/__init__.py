"""Subcommands that do more than call the runtime: ``sort``, ``history`` / ``undo`` and
``models`` (versions and rollback). The command line itself is :mod:`gensift.daemon.cli`."""

"""Where Windows services registered by gensift 0.1 start: ``python -m gensift.daemon.winhost``.

The service host is :mod:`gensift.daemon.platforms.winhost`; this name is kept so that a
service installed before the move still starts after an upgrade (``gensift service
install`` registers the new name).
"""

if __name__ == "__main__":
    import runpy

    runpy.run_module("gensift.daemon.platforms.winhost", run_name="__main__", alter_sys=True)

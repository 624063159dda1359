"""The running core: a file's way from a watch event to a decision.

event (``watcher``, ``rescan``, ``paths``) -> settled path -> decoded batch
(``decode``) -> probabilities (``sifter`` with the models' ``Predictor``) -> decision
(``decide``) -> file operation and journal row (:mod:`gensift.daemon.routing`), run by the
inference thread (``worker``) under the daemon's loop (``service``). ``layout`` says which
folders are watched and which never are. See docs/architecture.md.
"""

"""XMP sidecars: a decision, readable by photo managers, beside the file it is about.

With ``[output] sidecars = "xmp"`` every file gensift (or the review page) puts under
the output root gets ``name.png.xmp`` beside it, the naming digiKam and darktable read:

* ``xmp:Rating`` -1 for a quarantined file (the "rejected" rating), none otherwise;
* ``dc:subject``: the class as a tag (``gensift/<class>``, ``gensift/_review``, ...);
* the action, reason, probability, per-stage probabilities and model ids under
  gensift's own namespace.

The sidecar moves with its file: a later move of the file writes a new one at the new
place and removes the old one; an undo that takes the file out of the output root
removes it. A sidecar is written atomically and never replaces a file gensift did not
write (one without gensift's namespace is left alone).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from loguru import logger

from gensift.daemon.routing.fileops import shown
from gensift.daemon.routing.records import Decision
from gensift.models.fsutil import publish

NAMESPACE = "https://gensift.invalid/ns/1.0/"
SUFFIX = ".xmp"


def sidecar_for(path: Path) -> Path:
    """``photo.png`` -> ``photo.png.xmp``."""
    return path.with_name(path.name + SUFFIX)


def render(decision: Decision, checkpoints: Mapping[str, str], folder: str | None) -> str:
    p = decision.probability
    attrs = {
        "gensift:Action": decision.action,
        "gensift:Reason": decision.reason,
        "gensift:Class": decision.label or "",
        "gensift:Probability": "" if p is None else f"{p:.6f}",
        "gensift:Checkpoints": json.dumps(dict(checkpoints), sort_keys=True),
        "gensift:Probabilities": json.dumps(decision.probabilities, sort_keys=True),
    }
    if decision.action == "quarantine":
        attrs["xmp:Rating"] = "-1"
    attributes = "\n    ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items())
    tag = f"gensift/{folder}" if folder else "gensift"
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        f"    xmlns:gensift={quoteattr(NAMESPACE)}\n"
        f"    {attributes}>\n"
        f"   <dc:subject><rdf:Bag><rdf:li>{escape(tag)}</rdf:li></rdf:Bag></dc:subject>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>\n'
    )


def write_sidecar(
    path: Path, decision: Decision, checkpoints: Mapping[str, str], folder: str | None
) -> None:
    """Write ``path``'s sidecar (atomically, as every file gensift publishes); a failure is
    a warning, never a lost file."""
    target = sidecar_for(path)
    if target.exists() and not ours(target):
        logger.warning("{}: not gensift's sidecar; left as it is", shown(target))
        return
    text = render(decision, checkpoints, folder)
    try:
        publish(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as exc:
        logger.warning("{}: cannot write the sidecar ({})", shown(target), exc.strerror or exc)


def remove_sidecar(path: Path) -> None:
    """Remove the sidecar gensift wrote for ``path``, if there is one."""
    target = sidecar_for(path)
    if target.is_file() and ours(target):
        try:
            target.unlink()
        except OSError as exc:
            logger.warning("{}: cannot remove the sidecar ({})", shown(target), exc)


def ours(path: Path) -> bool:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as f:
            return NAMESPACE in f.read(4096)
    except OSError:
        return False

"""Check generated domain XML against libvirt's own RELAX NG schema before libvirt sees it.

libvirt's plain define accepts unknown elements silently; the schema does not. lxml is
imported lazily (+30 ms) and the parsed schema (~0.1 s to load) is kept per process.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from vmwrapper.errors import PermanentJobError

if TYPE_CHECKING:
    from lxml import etree

DOMAIN_RNG = "/usr/share/libvirt/schemas/domain.rng"


class DomainXmlError(PermanentJobError):
    """Generated domain XML is malformed or not valid for libvirt (a bug, or hostile data)."""


@lru_cache(maxsize=4)
def _schema(path: str) -> etree.RelaxNG:
    from lxml import etree  # noqa: PLC0415  (lazy, see the module docstring)

    try:
        return etree.RelaxNG(etree.parse(path, _parser()))
    except (OSError, etree.LxmlError) as err:
        raise DomainXmlError(
            f"cannot load libvirt's schema {path} (is libvirt installed?): {_one_line(err)}"
        ) from None


def _parser() -> etree.XMLParser:
    from lxml import etree  # noqa: PLC0415

    # Our own output, but never let a parser fetch or expand anything.
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def validate_domain(xml: str, schema_path: str = DOMAIN_RNG) -> None:
    """Raise DomainXmlError (one line; every problem in ``detail``) unless ``xml`` is valid."""
    from lxml import etree  # noqa: PLC0415

    schema = _schema(schema_path)
    try:
        document = etree.fromstring(xml.encode("utf-8"), _parser())
    except etree.XMLSyntaxError as err:
        raise DomainXmlError(f"generated domain XML is malformed: {_one_line(err)}") from None
    if schema.validate(document):
        return
    errors = [f"line {e.line}: {' '.join(e.message.split())}" for e in schema.error_log]
    first = errors[0] if errors else "no detail"
    raise DomainXmlError(
        f"generated domain XML does not match libvirt's schema: {first}",
        detail="\n".join(errors),
    )


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:197] + "..."

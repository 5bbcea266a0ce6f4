"""griffe extension: document ``x = forwarded[T]("path", "doc")`` as the property it is.

:class:`kaffi._bases.forwarded` keeps a pass-through property to one line; its text is
its second argument, which ``help()`` shows. griffe reads the source without running it,
so this gives the attribute that text as its docstring, ``T`` as its type and the
``property`` label, and the API reference lists it as it listed the ``@property``.
"""

from __future__ import annotations

import ast
from typing import Any

import griffe


class ForwardedProperties(griffe.Extension):
    """Turns each ``forwarded[...]`` class attribute into a documented property."""

    def on_attribute_instance(self, *, node: Any, attr: griffe.Attribute, **kwargs: Any) -> None:
        value = getattr(node, "value", None)
        if not isinstance(node, ast.Assign) or not isinstance(value, ast.Call):
            return
        func = value.func
        if not (
            isinstance(func, ast.Subscript)
            and isinstance(func.value, ast.Name)
            and func.value.id == "forwarded"
            and len(value.args) == 2
            and isinstance(value.args[1], ast.Constant)
            and isinstance(value.args[1].value, str)
        ):
            return
        attr.docstring = griffe.Docstring(value.args[1].value, parent=attr, lineno=node.lineno)
        attr.annotation = ast.unparse(func.slice)
        attr.value = None
        attr.labels.difference_update({"class-attribute", "instance-attribute"})
        attr.labels.update({"property", "read-only"})

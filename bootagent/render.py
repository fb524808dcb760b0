"""Jinja rendering for the templates step: sandboxed, strict, and data kept as data.

Only the templates step imports this, and only when a template missed its cache, so a
boot with nothing to do never imports Jinja (jinja2 is imported inside `Renderer`).

Tag and userData values are passed as values, never compiled: nothing here hands them
to `from_string`. A tag whose name or value holds a control character is "poisoned":
`tag_map` stores a `PoisonedValue` in its place and the mapping raises `PoisonedTag`
when that tag is read, so only the templates that use it fail. Every error that
leaves here is a one-line `RenderError` that never quotes a tag or userData value.
"""

from __future__ import annotations

import re
import traceback

from bootagent.errors import StepError
from bootagent.text import escaped, one_line, shorten

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_OUTPUT = 4 << 20          # characters a template may produce
MAX_REPEAT = 1 << 20          # 'x' * n may make at most this many items
MAX_EXPONENT = 4096
TEMPLATE_NAME = "<template>"  # the file name Jinja gives a template built from a string


class RenderError(StepError):
    """One template could not be rendered; the message names what, never a data value."""


class PoisonedTag(Exception):
    """A template read a tag that holds a control character. Deliberately not a
    LookupError/TypeError: Jinja's sandbox swallows those while resolving `tags.name`."""

    def __init__(self, tag: str):
        super().__init__(tag)
        self.tag = tag


def printable_name(name: str) -> str:
    """A tag name safe to put in a one-line message (control characters escaped, bounded)."""
    return shorten(escaped(name), 64)


class PoisonedValue:
    """Stands where a poisoned tag's value would be, so that even a path that bypasses
    `TagMap`'s methods (e.g. `dict.values(tags)`) cannot render the value: any use raises."""

    __slots__ = ("tag",)

    def __init__(self, tag: str):
        self.tag = tag

    def _refuse(self, *args, **kwargs):
        raise PoisonedTag(self.tag)

    __str__ = __repr__ = __format__ = __html__ = __bool__ = __len__ = __iter__ = _refuse
    __getitem__ = __contains__ = __int__ = __float__ = __index__ = _refuse
    __add__ = __radd__ = __mul__ = __rmul__ = __mod__ = __rmod__ = _refuse
    __lt__ = __le__ = __gt__ = __ge__ = _refuse


class TagMap(dict):
    """The `tags` of the template context: a dict that raises `PoisonedTag` on reading a
    poisoned tag (by key, `.get`, `.items()`, `.values()`, iteration over a poisoned name)."""

    def __init__(self, tags: dict, poisoned: frozenset):
        super().__init__(tags)
        self.poisoned = poisoned

    def _check(self, name) -> None:
        if name in self.poisoned:
            raise PoisonedTag(name)

    def __getitem__(self, name):
        self._check(name)
        return super().__getitem__(name)

    def get(self, name, default=None):
        self._check(name)
        return super().get(name, default)

    def __iter__(self):
        for name in super().__iter__():
            if CONTROL.search(name):
                raise PoisonedTag(name)
            yield name

    def keys(self):
        return list(self.__iter__())

    def items(self):
        return [(name, self[name]) for name in self]

    def values(self):
        return [self[name] for name in self]

    def copy(self):
        return dict(self.items())

    def __repr__(self):
        return repr(dict(self.items()))

    __str__ = __repr__


def template_context(inputs: dict, tags: dict, userdata: dict, customdata: dict) -> dict:
    """The names templates and `when` expressions see (SPEC "Template manifest"): the raw
    inputs (compute, network, hostname, admin_user), the tags with poisoned values fenced
    off, and the userData and customData mappings. The boot and `bootagent render` both
    build it here, so a template renders alike in both."""
    return {**inputs, "tags": tag_map(tags), "userdata": userdata, "customdata": customdata}


def render_entry(renderer: "Renderer", text: str, when: str | None, context: dict) -> str | None:
    """One template's output, or None when its `when` expression does not hold."""
    if when and not renderer.when(when, context):
        return None
    return renderer.render(text, context)


def tag_map(tags: dict) -> TagMap:
    """Wrap the instance's tags, poisoning every tag whose name or value has a control character."""
    clean, poisoned = {}, set()
    for name, value in tags.items():
        if CONTROL.search(name) or (isinstance(value, str) and CONTROL.search(value)):
            poisoned.add(name)
            clean[name] = PoisonedValue(name)
        else:
            clean[name] = value
    return TagMap(clean, frozenset(poisoned))


class Renderer:
    """One sandboxed, strict Jinja environment for a run (built on the first cache miss)."""

    def __init__(self):
        from jinja2 import DictLoader, StrictUndefined
        from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
        from jinja2.utils import missing

        class Strict(StrictUndefined):
            __slots__ = ()

            @property
            def _undefined_message(self) -> str:
                if self._undefined_hint:
                    return self._undefined_hint
                if self._undefined_obj is missing:
                    return f"undefined name '{self._undefined_name}'"
                if isinstance(self._undefined_obj, TagMap):
                    return (f"no tag '{self._undefined_name}' (write tags.get('{self._undefined_name}') "
                            "for a tag that may be absent)")
                return f"undefined key or attribute '{self._undefined_name}'"

        class Sandbox(ImmutableSandboxedEnvironment):
            intercepted_binops = frozenset({"*", "**"})

            def call_binop(self, context, operator, left, right):
                if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
                    raise SecurityError(f"refusing an exponent above {MAX_EXPONENT}")
                if operator == "*":
                    for seq, count in ((left, right), (right, left)):
                        if (isinstance(seq, (str, list, tuple)) and isinstance(count, int)
                                and len(seq) * count > MAX_REPEAT):
                            raise SecurityError(f"refusing to repeat a sequence to more than {MAX_REPEAT} items")
                return super().call_binop(context, operator, left, right)

        self._security_error = SecurityError
        # a loader with no template: include, import and extends fail as TemplateNotFound
        self.env = Sandbox(undefined=Strict, keep_trailing_newline=True, autoescape=False,
                           loader=DictLoader({}))

    def when(self, expression: str, context: dict) -> bool:
        """Evaluate a manifest entry's `when` expression in the sandbox."""
        try:
            compiled = self.env.compile_expression(expression, undefined_to_none=False)
            return bool(compiled(**context))
        except Exception as err:
            # no line: Jinja compiles an expression into a template of its own, whose
            # line numbers are not the manifest's
            raise RenderError(f"in 'when': {self._describe(err, expression, lines=False)}") from None

    def render(self, source: str, context: dict) -> str:
        """The template's output; RenderError (one line) when it cannot be had safely."""
        try:
            template = self.env.from_string(source)
            parts, size = [], 0
            for part in template.generate(context):
                size += len(part)
                if size > MAX_OUTPUT:
                    raise RenderError(f"its output is larger than {MAX_OUTPUT} characters")
                parts.append(part)
            return "".join(parts)
        except RenderError:
            raise
        except Exception as err:
            raise RenderError(self._describe(err, source)) from None

    def _describe(self, err: Exception, source: str, lines: bool = True) -> str:
        from jinja2 import TemplateError, TemplateNotFound, TemplatesNotFound, TemplateSyntaxError, UndefinedError

        where = _line_of(err) if lines else ""
        if isinstance(err, PoisonedTag):
            return (f"tag '{printable_name(err.tag)}' holds a control character (a newline?), "
                    "refused for rendering: fix the tag's value")
        if isinstance(err, (TemplateNotFound, TemplatesNotFound)):
            return f"include, import and extends are not supported{where}: put it all in one template"
        if isinstance(err, TemplateSyntaxError):
            return f"syntax error{f' at line {err.lineno}' if lines else ''}: {one_line(err.message or '')}"
        if isinstance(err, self._security_error):
            return f"refused by the sandbox{where}: {one_line(str(err))}"
        if isinstance(err, UndefinedError):
            return f"{_hide_computed_name(one_line(str(err)), source)}{where}"
        if isinstance(err, TemplateError):
            return f"{one_line(str(err))}{where}"
        if isinstance(err, RecursionError):
            return f"recursion too deep{where}"
        if isinstance(err, OverflowError):  # the sandbox's range() limit, or a number too large
            return f"{one_line(str(err))}{where}"
        # Any other exception's text may quote a value (tags, userData): name only its kind.
        return f"{type(err).__name__}{where}"


def _line_of(err: Exception) -> str:
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == TEMPLATE_NAME]
    return f" at line {frames[-1].lineno}" if frames else ""



def _hide_computed_name(message: str, source: str) -> str:
    """An undefined key computed at render time (`userdata[userdata.x]`) would quote data:
    keep the name only when the template itself spells it."""
    found = re.search(r"'([^']*)'", message)
    if found and found.group(1) not in source:
        return "undefined key or attribute computed at render time"
    return message

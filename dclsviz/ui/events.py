"""The Gradio glue every tab shares: the one mapping of errors to what a visitor sees, the adapter that turns
a handler of one typed request into a Gradio callback, and the titled picture every tab shows maps in.

Handlers are plain module-level functions ``handler(context, request[, progress])``; the request is a frozen
dataclass whose fields are the event's inputs in order, so the wiring says once which widget feeds which
field, and a handler can be called (and tested) without Gradio.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import gradio as gr

from .. import limits, review
from ..compare import NonFiniteError
from .service import CheckpointProblem, UserError

log = logging.getLogger("dclsviz.ui")

# Exceptions whose message is meant for the visitor: a wrong input, a missing checkpoint, a model's NaN, a limit
# breached, a token that opens nothing.
EXPECTED = (UserError, NonFiniteError, limits.LimitError, review.AccessDenied)


def gradio_error(error: BaseException) -> gr.Error:
    """What the visitor is shown for ``error``; the server log gets one line for an expected error and the
    traceback only for an unexpected one."""
    if isinstance(error, EXPECTED):
        text = str(error)
        log.warning("refused: %s", text.splitlines()[0][:300] if text else type(error).__name__)
        # print_exception=False: Gradio would print a traceback for what is only a wrong input
        return gr.Error(text, print_exception=False)
    log.error("unexpected %s", type(error).__name__, exc_info=error)
    # the exception's text can name server files: it goes to the log, the visitor gets its kind only
    return gr.Error(f"internal error ({type(error).__name__}); the app keeps running and the details are in the "
                    "server log, please report this", print_exception=False)


def request(name: str, doc: str, module: str, **fields: Any) -> type:
    """A small handler request type in one line: a frozen dataclass with ``fields`` (name → type) in the event's
    input order, e.g. ``ArchRequest = request("ArchRequest", "A change of the model pair.", __name__, arch=str)``.
    """
    cls = dataclasses.make_dataclass(name, list(fields.items()), frozen=True)
    cls.__doc__, cls.__module__ = doc, module
    return cls


def is_checkpoint_problem(error: BaseException) -> bool:
    """Whether ``error`` is a pair's missing or unusable checkpoint (the tabs offer the demo pair then)."""
    return isinstance(error, CheckpointProblem)


def bind(handler: Callable[..., Any], request_type: type, *context: Any,
         progress: bool = False) -> Callable[..., Any]:
    """A Gradio callback: the event's input values become one ``request_type``, then
    ``handler(*context, request)`` (with a ``gr.Progress`` last when ``progress``). Anything the handler
    raises reaches the visitor through ``gradio_error``.

    The callback takes the inputs as ``*values``; Gradio injects ``gr.Progress`` only into parameters before
    the first variadic one, hence ``progress`` comes first in its signature.
    """
    if progress:
        def callback(progress=gr.Progress(), *values):
            return _guarded(handler, *context, request_type(*values), progress)
    else:
        def callback(*values):
            return _guarded(handler, *context, request_type(*values))
    callback.__name__ = callback.__qualname__ = handler.__name__
    return callback


def _guarded(handler: Callable[..., Any], *args: Any) -> Any:
    try:
        return handler(*args)
    except gr.Error:
        raise
    except Exception as e:  # noqa: BLE001 - every error reaches the visitor through one mapping
        raise gradio_error(e) from None


def api_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """For an API endpoint's function: errors reach the client through ``gradio_error``."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        return _guarded(functools.partial(fn, **kwargs), *args)
    return wrapped


def titled_image(title: str, **kwargs) -> gr.Image:
    """A read-only picture under a title of its own: Gradio's label chip would cover the top of a map and cut a
    long name. ``kwargs`` go to ``gr.Image``."""
    return title_and_image(title, **kwargs)[1]


def title_and_image(title: str, **kwargs) -> tuple[gr.Markdown, gr.Image]:
    """``titled_image`` with its title, for a panel whose title changes (``title_text`` makes the new one)."""
    heading = gr.Markdown(title_text(title), elem_classes="map-title")
    return heading, gr.Image(label=title, show_label=False, interactive=False, format="png", **kwargs)


def title_text(title: str) -> str:
    """The Markdown of a picture's title."""
    return f"**{title}**"

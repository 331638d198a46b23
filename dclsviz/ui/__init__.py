"""The Gradio app: inputs become a ``Sample``, ``compare.compare`` does the work, and its ``Comparison`` is
laid out on the page. Maps, scores and preprocessing all come from the core.

``service``: configuration, inputs and the call into the core (no Gradio) · ``present``: what a Comparison
looks like on the page · ``page``: the Blocks and the API endpoints (``/compare``, ``/models``, ``/classes``,
``/shards``; see the README's "API" section).
"""

from .page import CSS, build_ui, launch, theme
from .service import AppConfig, UserError

__all__ = ["AppConfig", "CSS", "UserError", "build_ui", "launch", "theme"]

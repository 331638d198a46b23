"""The Gradio app: inputs become a ``Sample``, ``compare.compare`` does the work, and its ``Comparison`` is
laid out on the page. Maps, scores and preprocessing all come from the core.

``service``: configuration, inputs and the call into the core (no Gradio, no page text) · ``present``: all the
page's text and what a Comparison looks like on it · ``events``: the one error mapping and the adapter from
Gradio inputs to typed requests · ``compare_tab``, ``review_tab`` (+ ``review_api``), ``dataset_tab``: each tab's
widgets and handlers · ``page``: the Blocks, the /compare, /models, /classes and /shards endpoints and the launch
(see the README's "API" section).
"""

from .page import CSS, build_ui, launch, theme
from .service import AppConfig, UserError

__all__ = ["AppConfig", "CSS", "UserError", "build_ui", "launch", "theme"]

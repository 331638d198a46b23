"""Start the dclsviz app: ``python app.py`` (Hugging Face Spaces runs the same file).

Host and port come from DCLSVIZ_HOST / DCLSVIZ_PORT, else GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (what
Spaces sets), else 127.0.0.1:7860. Everything else is in ``dclsviz.ui``.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Mapping, Optional

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv=None, env: Optional[Mapping[str, str]] = None) -> argparse.Namespace:
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default=env.get("DCLSVIZ_HOST") or env.get("GRADIO_SERVER_NAME") or "127.0.0.1")
    p.add_argument("--port", type=int,
                   default=int(env.get("DCLSVIZ_PORT") or env.get("GRADIO_SERVER_PORT") or 7860))
    p.add_argument("--checkpoint-dir", type=Path,
                   help="a folder holding the published checkpoint files (default: $DCLSVIZ_CHECKPOINT_DIR)")
    p.add_argument("--offline", action="store_true", help="never download checkpoints (also DCLSVIZ_OFFLINE=1)")
    p.add_argument("--default-arch", help="the model pair selected at start (also DCLSVIZ_DEFAULT_ARCH)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    # one line per event, named by its logger: a visitor's wrong input is a line, not a traceback
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from dclsviz import ui
    from dclsviz.ui import service

    cfg = ui.AppConfig.from_env()
    if args.checkpoint_dir:
        cfg.checkpoint_dir = args.checkpoint_dir
    if args.offline:
        cfg.download = False
    if args.default_arch:
        cfg.default_arch = args.default_arch
    service.apply_thread_budget(cfg)  # torch's threads are process-wide: set once, before any request
    ui.launch(ui.build_ui(cfg), args.host, args.port)


if __name__ == "__main__":
    main()

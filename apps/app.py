"""The Gradio Blocks app: one tab per domain, served offline on 127.0.0.1 by default (``mmseq demo``)."""

from __future__ import annotations

import os

# Before gradio is imported: no usage statistics, no version check, no hub.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_SSR_MODE", "False")

import gradio as gr  # noqa: E402

from . import audio, medical, vision  # noqa: E402
from .common import Settings, examples_dir  # noqa: E402

__all__ = ["Settings", "build_demo", "serve"]

TABS = {"vision": ("Vision", vision.build_tab), "medical": ("Medical", medical.build_tab),
        "audio": ("Audio", audio.build_tab)}

CSS = """
.mmseq-status { padding: 8px 10px; border-radius: 6px; margin: 4px 0; }
.mmseq-ok { background: #e8f4ea; color: #14532d; }
.mmseq-error { background: #fdecea; color: #8a1c12; border: 1px solid #f5c2bd; }
.mmseq-swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #333; vertical-align: middle;
                margin-right: 4px; }
.mmseq-legend { display: flex; flex-wrap: wrap; gap: 4px 12px; font-size: 0.85em; }
.mmseq-shares td, .mmseq-shares th { padding: 1px 8px; }
.mmseq-stats th { text-align: left; padding: 2px 10px 2px 0; vertical-align: top; }
.mmseq-stats td { padding: 2px 0; }
.mmseq-num { text-align: right; font-variant-numeric: tabular-nums; }
mark.mmseq-finding { background: #ffe08a; padding: 0 2px; }
mark.mmseq-negated { background: transparent; color: #777; text-decoration: line-through; }
.mmseq-chip { display: inline-block; background: #ffe08a; border-radius: 10px; padding: 0 8px; margin: 2px; }
.mmseq-note { color: #666; font-size: 0.85em; }
"""


def build_demo(domains: tuple[str, ...] = ("vision", "medical", "audio"), settings: Settings | None = None
               ) -> gr.Blocks:
    """The app (not yet launched). With several domains, one tab each."""
    settings = settings or Settings()
    unknown = [d for d in domains if d not in TABS]
    if unknown:
        raise ValueError(f"unknown demo {unknown}; choose from {list(TABS)}")
    with gr.Blocks(title="mmseq demos", analytics_enabled=False) as demo:
        gr.Markdown("## mmseq demos\nEverything runs on this machine; nothing is sent elsewhere.")
        if len(domains) == 1:
            TABS[domains[0]][1](settings)
        else:
            with gr.Tabs():
                for name in domains:
                    title, build = TABS[name]
                    with gr.Tab(title, id=name, elem_id=f"tab-{name}"):
                        build(settings)
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=64)
    return demo


def launch_options(settings: Settings, host: str, port: int | None) -> dict:
    """Keyword arguments of ``Blocks.launch``: local only unless ``host`` says otherwise, limits, no extras."""
    return dict(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True,
                max_file_size=f"{settings.max_file_mb:g}mb", allowed_paths=[str(examples_dir())], ssr_mode=False,
                pwa=False, mcp_server=False, enable_monitoring=False, quiet=True, css=CSS,
                footer_links=["settings"])


def serve(domains: tuple[str, ...], settings: Settings, host: str = "127.0.0.1", port: int | None = 7860) -> None:
    """Build and serve until interrupted; prints the address once it is listening."""
    from mmseq.errors import UserError

    demo = build_demo(domains, settings)
    try:
        _, url, _ = demo.launch(prevent_thread_lock=True, **launch_options(settings, host, port))
    except OSError:  # Gradio says "Cannot find empty port" for both
        raise UserError(f"cannot serve on {host}:{port}: the port is taken or the address is not this machine's; "
                        "choose another --port or --host") from None
    print(f"mmseq demo: serving {', '.join(domains)} at {url}", flush=True)
    try:
        demo.block_thread()
    finally:
        demo.close()

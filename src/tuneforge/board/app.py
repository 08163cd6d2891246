"""The Board's gradio page: Train (forms from `config.describe()`), Monitor, Chat, Evaluate, Export. It holds no run
state of its own: runs live in `Runs` (board/jobs.py) as detached processes, the form lives in the browser's
localStorage, so a reload or a restarted Board shows the same runs and the same form. Public gradio API only."""

from tuneforge.board import forms
from tuneforge.board import i18n as texts

TICK_S = 2.0  # how often the page asks for run progress


def build_app(runs, lang: str | None = None):
    """The page for the runs in `runs` (a board.jobs.Runs). `lang`: "en"/"zh" forces a language (launch applies it);
    None follows the browser."""
    import gradio as gr

    from tuneforge.board.tabs import chat, monitor, tools, train

    i18n = texts.make(lang)
    t = i18n  # gr.I18n is called with a key and gives the text the browser translates
    specs = forms.spec()
    with gr.Blocks(title="tuneforge Board") as demo:
        gr.Markdown(t("title"))
        gr.Markdown(t("subtitle"))
        status = gr.Markdown("", elem_id="tf-status")
        progress = gr.HTML(monitor.progress_html(None), elem_id="tf-progress")
        form_state = gr.BrowserState({}, storage_key="tuneforge-board-form", secret=train.storage_secret(runs))
        timer = gr.Timer(TICK_S)
        with gr.Tabs(elem_id="tf-tabs"):
            with gr.Tab(t("tab_train"), id="train", elem_id="tf-tab-train"):
                tr = train.build(gr, t, specs, runs)
            with gr.Tab(t("tab_monitor"), id="monitor", elem_id="tf-tab-monitor"):
                mon = monitor.build(gr, t)
            with gr.Tab(t("tab_chat"), id="chat", elem_id="tf-tab-chat") as chat_tab:
                ch = chat.build(gr, t)
            with gr.Tab(t("tab_evaluate"), id="evaluate", elem_id="tf-tab-evaluate"):
                ev = tools.build_eval(gr, t)
            with gr.Tab(t("tab_export"), id="export", elem_id="tf-tab-export"):
                ex = tools.build_export(gr, t)

        train.wire(gr, tr, specs, runs, form_state, mon["job_sel"])
        monitor.wire(gr, mon, runs, status, progress, timer)
        chat.wire(gr, ch, runs, chat_tab)
        tools.wire(gr, ev, ex, ch)

        def on_load(saved):
            return [gr.update() if v is None else v for v in train.restore(specs, runs, saved)]

        demo.load(on_load, inputs=form_state, outputs=tr["fields"], show_progress="hidden").then(
            tr["on_change"], inputs=tr["fields"], outputs=tr["change_outputs"], show_progress="hidden")
    demo.tf_i18n = i18n  # launch() hands it to gradio
    return demo


def launch(host: str = "127.0.0.1", port: int = 7860, auth=None, runs=None, lang: str | None = None) -> int:
    """Serve the Board until interrupted. `auth`: [(user, password)] or None (board/cli.py refuses a non-loopback host
    without it before gradio is imported)."""
    import threading

    from tuneforge.board.tabs.train import estimate_text

    demo = build_app(runs, lang)
    # torch and the model's shape load on the first estimate: do it now, not while the first page waits
    threading.Thread(target=estimate_text, args=({},), daemon=True).start()
    demo.queue(default_concurrency_limit=4)
    print(f"tuneforge board: http://{host}:{port} (runs in {getattr(runs, 'root', '?')})", flush=True)
    demo.launch(server_name=host, server_port=port, auth=auth or None, i18n=demo.tf_i18n, show_error=True, quiet=True,
                footer_links=["settings"])
    return 0

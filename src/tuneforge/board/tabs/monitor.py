"""The Monitor tab: the runs list (reattached from the runs folder on every page load), one run's progress, plots of
loss/eval loss, learning rate, tokens/s and stage metrics, its log tail and error, and a comparison of two runs."""

import html
import time

PLOTS = {"loss": ("loss", "eval_loss"), "lr": ("learning_rate",), "tps": ("tokens_per_second",)}
NOT_STAGE = {"loss", "eval_loss", "learning_rate", "tokens_per_second", "grad_norm", "epoch", "step"}


def _series(output_dir: str) -> dict:
    try:
        from tuneforge.board.series import series
    except ImportError:  # the launcher's series module is missing: plots stay empty, the rest works
        return {}
    try:
        return series(output_dir) or {}
    except (OSError, ValueError):
        return {}


def frame(data: dict, names) -> "object":
    """A long DataFrame (step, value, series) of the named series, for a LinePlot."""
    import pandas as pd

    rows = [(float(s), float(v), name) for name in names for s, v in data.get(name, []) if v is not None]
    return pd.DataFrame(rows, columns=["step", "value", "series"])


def stage_names(data: dict) -> list[str]:
    return sorted(k for k, v in data.items() if k not in NOT_STAGE and v)


def _fmt_eta(s) -> str:
    if s is None:
        return ""
    s = int(s)
    return f", ETA {s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f", ETA {s // 60}m{s % 60:02d}s"


def status_text(job) -> str:
    """One line for tf-status: id, status, step/total with ETA, and the error of a failed run."""
    if job is None:
        return "no run yet: fill the form and press Start"
    parts = [f"**{job.id}**: {job.status}"]
    if job.step is not None:
        parts.append(f"step {job.step}/{job.total if job.total else '?'}{_fmt_eta(job.eta_s)}")
    if job.phase and job.status == "running":
        parts.append(f"phase {job.phase}")
    parts.append(f"output `{job.output_dir}`")
    text = " | ".join(parts)
    if job.error:
        text += f"\n\n**error:** {html.escape(str(job.error))}"
    return text


def progress_value(job) -> float:
    if job is None or not job.total or job.step is None:
        return 1.0 if job is not None and job.status == "finished" else 0.0
    return min(1.0, job.step / job.total)


def progress_html(job) -> str:
    return f'<progress value="{progress_value(job):.3f}" max="1" style="width:100%"></progress>'



def runs_table(jobs) -> list[list]:
    def when(t):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""

    return [[j.id, j.status, when(j.started or j.created), f"{j.step or 0}/{j.total or '?'}",
             j.config.get("model_name_or_path", ""), j.config.get("finetuning_type", "lora"), j.output_dir] for j in jobs]


def pick(jobs, current: str | None) -> str | None:
    """The run to show: the chosen one if it still exists, else a running one, else the newest."""
    ids = [j.id for j in jobs]
    if current in ids:
        return current
    running = [j.id for j in jobs if j.status in ("running", "queued")]
    return running[0] if running else (ids[0] if ids else None)


def build(gr, t) -> dict:
    with gr.Row():
        job_sel = gr.Dropdown(label=t("run"), choices=[], value=None, elem_id="tf-run", scale=3)
        refresh = gr.Button(t("refresh"), elem_id="tf-refresh", scale=1)
    table = gr.Dataframe(headers=["id", "status", "started", "step", "model", "method", "output"], label=t("runs"),
                         interactive=False, elem_id="tf-runs")
    with gr.Row():
        loss = gr.LinePlot(x="step", y="value", color="series", label=t("loss_plot"), elem_id="tf-loss-plot", height=260)
        lr = gr.LinePlot(x="step", y="value", color="series", label=t("lr_plot"), elem_id="tf-lr-plot", height=260)
    with gr.Row():
        tps = gr.LinePlot(x="step", y="value", color="series", label=t("tps_plot"), elem_id="tf-tps-plot", height=260)
        stage = gr.LinePlot(x="step", y="value", color="series", label=t("stage_plot"), elem_id="tf-stage-plot", height=260)
    log = gr.Textbox(label=t("log"), lines=12, max_lines=12, elem_id="tf-log", autoscroll=True)
    with gr.Accordion(t("compare"), open=False, elem_id="tf-compare"):
        with gr.Row():
            a = gr.Dropdown(label=t("compare_a"), choices=[], elem_id="tf-compare-a")
            b = gr.Dropdown(label=t("compare_b"), choices=[], elem_id="tf-compare-b")
        cmp_plot = gr.LinePlot(x="step", y="value", color="series", label=t("loss_plot"), elem_id="tf-compare-plot", height=260)
        diff = gr.Dataframe(headers=["key", "A", "B"], label=t("config_diff"), interactive=False, elem_id="tf-config-diff")
    return dict(job_sel=job_sel, refresh=refresh, table=table, loss=loss, lr=lr, tps=tps, stage=stage, log=log, a=a, b=b,
                cmp_plot=cmp_plot, diff=diff)


def wire(gr, ui: dict, runs, status, progress, timer) -> None:
    """Refresh on the timer, on load and on a run change; only what changed is sent to the page."""
    seen = gr.State({"ids": None, "plot": None})

    def refresh(current, memo):
        try:
            runs.poll()
        except Exception as e:  # one bad job folder must not stop the page from updating
            return [f"**cannot read the runs folder:** {html.escape(str(e))}", gr.update(), gr.update(), gr.update(), memo,
                    gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update()]
        jobs = runs.list()
        chosen = pick(jobs, current)
        job = next((j for j in jobs if j.id == chosen), None)
        ids = [j.id for j in jobs]
        memo = dict(memo or {})
        sel = cmp = gr.update()
        if ids != memo.get("ids") or chosen != current:
            sel = gr.update(choices=ids, value=chosen)
            cmp = gr.update(choices=ids)
            memo["ids"] = ids
        plots = [gr.update()] * 4
        if job is not None:
            data = _series(job.output_dir)
            key = (job.id, job.status, sum(len(v) for v in data.values()))
            if key != tuple(memo.get("plot") or ()):
                plots = [frame(data, PLOTS["loss"]), frame(data, PLOTS["lr"]), frame(data, PLOTS["tps"]),
                         frame(data, stage_names(data))]
                memo["plot"] = list(key)
        tail = runs.log_tail(job.id, 40) if job is not None else ""
        return [status_text(job), progress_html(job), runs_table(jobs), sel, memo, *plots, tail, cmp, cmp]

    outs = [status, progress, ui["table"], ui["job_sel"], seen, ui["loss"], ui["lr"], ui["tps"], ui["stage"], ui["log"],
            ui["a"], ui["b"]]
    gr.on([timer.tick, ui["refresh"].click, ui["job_sel"].change], refresh, inputs=[ui["job_sel"], seen], outputs=outs,
          show_progress="hidden", trigger_mode="always_last")

    def compare(a, b):
        from tuneforge.board.series import config_diff

        if not a or not b:
            return gr.update(), []
        ja, jb = runs.get(a), runs.get(b)
        import pandas as pd

        frames = []
        for label, j in (("A", ja), ("B", jb)):
            f = frame(_series(j.output_dir), ("loss",))
            f["series"] = f"{label}: {j.id}"
            frames.append(f)
        rows = [[k, str(x), str(y)] for k, x, y in config_diff(ja.config, jb.config)]
        return pd.concat(frames, ignore_index=True), rows

    gr.on([ui["a"].change, ui["b"].change], compare, inputs=[ui["a"], ui["b"]], outputs=[ui["cmp_plot"], ui["diff"]])
    ui["refresh_fn"] = refresh

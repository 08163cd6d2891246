"""The Train tab: a form generated from `config.describe()` (a new key appears with no UI code), a live memory
estimate with `--fit`'s suggestion, per-field validation, the dataset preview, YAML/CLI preview, save/load, start/stop."""

import hashlib
import html
import os

from tuneforge.board import forms

HELP_CHARS = 240  # a field's help under its label; the whole text is in `tuneforge train --help-keys`
ESTIMATE_EMPTY = "_fill the model and settings to see the memory estimate_"


def _info(f: forms.FieldSpec) -> str | None:
    text = (f.help or "").strip()
    return (text[:HELP_CHARS] + "...") if len(text) > HELP_CHARS else (text or None)


def _widget(gr, f: forms.FieldSpec, visible: bool):
    """The gradio component for one field."""
    common = dict(label=f.name, info=_info(f), elem_id=f.elem_id, visible=visible)
    if f.name == "model_name_or_path":
        from tuneforge.models.aliases import ALIASES

        return gr.Dropdown(choices=sorted(ALIASES), value=f.value, allow_custom_value=True, filterable=True, **common)
    if f.widget == "checkbox":
        return gr.Checkbox(value=f.value, **common)
    if f.widget == "dropdown":
        return gr.Dropdown(choices=f.choices, value=f.value, **common)
    if f.widget == "multiselect":
        return gr.Dropdown(choices=dataset_names("data")[0], value=f.value, multiselect=True, allow_custom_value=True,
                           filterable=True, **common)
    if f.widget == "number":
        return gr.Number(value=f.value, **common)
    return gr.Textbox(value=f.value, lines=1, **common)


def dataset_names(dataset_dir: str) -> tuple[list[str], str | None]:
    """(names in the folder's dataset_info.json, the error reading it or None)."""
    from tuneforge import TuneforgeError
    from tuneforge.data.registry import read_dataset_info

    try:
        info = read_dataset_info(dataset_dir or "data")
    except TuneforgeError as e:
        return [], str(e)
    if info is None:
        return [], f"no dataset_info.json in `{dataset_dir}`: set dataset_dir to a folder that has one"
    return sorted(info), None


def estimate_text(cfg: dict) -> tuple[str, str]:
    """(markdown of the estimate with its breakdown and verdict, markdown of `--fit`'s best configurations)."""
    from tuneforge import TuneforgeError, config
    from tuneforge.memory import GIB
    from tuneforge.memory.api import device_memory, input_from_config, shape_of
    from tuneforge.memory.estimate import describe, estimate_shape
    from tuneforge.memory.fit import search, stage_memory

    try:
        c = config.resolve(config.from_flat(cfg, purpose="infer"), quiet=True)
        shape = shape_of(c.model.model_name_or_path, c.model.cache_dir)
        x = input_from_config(c)
        adjust = stage_memory(c)
        report = estimate_shape(shape, adjust(x) if adjust else x)
        total, what = device_memory()
    except TuneforgeError as e:
        return f"**estimate unavailable:** {html.escape(str(e))}", ""
    if not report.known:
        return f"**estimate unavailable:** {html.escape(report.detail.get('unknown', ''))}", ""
    verdict = "fits" if report.total <= total else "does NOT fit"
    head = (f"### {report.total / GIB:.2f} GiB: {verdict} in this machine's {total / GIB:.1f} GiB ({what})\n"
            f"batch {x.batch} x {x.seq} tokens (worst case: every row cutoff_len long), {x.dtype}, "
            f"{report.trainable_params:,} of {report.total_params:,} parameters train\n\n")
    table = "```\n" + describe(report, total) + "\n```"
    effective = x.batch * max(1, x.grad_accum)
    fits = search(shape, x, total, effective, top=3, adjust=adjust)
    if not fits:
        fit = f"nothing fits in {total / GIB:.1f} GiB at micro-batch 1: shorten cutoff_len or use a smaller model"
    else:
        rows = "\n".join(f"| {f.name} | {f.x.batch} x {f.grad_accum} | {f.report.total / GIB:.2f} | {f.speed:.2f} |" for f in fits)
        fit = ("| configuration | micro-batch x accumulation | GiB | speed vs LoRA |\n|---|---|---|---|\n" + rows +
               "\n\nYAML for the first:\n```yaml\n" + "\n".join(fits[0].yaml()) + "\n```")
    return head + table, fit


def preview_data(cfg: dict) -> tuple[list, str]:
    """(highlighted text of the first examples, markdown status) through the data doctor, tokenizer only."""
    from tuneforge import TuneforgeError, config, stages
    from tuneforge.data import doctor

    if not cfg.get("dataset"):
        return [], "choose a dataset to preview it"
    try:
        c = config.resolve(config.from_flat(cfg, purpose="infer"), quiet=True)
        stage = stages.STAGES.get(c.method.stage)
        report = doctor.run(c, kind=stage.data_kind if stage else "supervised")
    except TuneforgeError as e:
        return [], f"**cannot preview:** {html.escape(str(e))}"
    spans, notes = [], []
    for d in report["datasets"]:
        if "error" in d:
            notes.append(f"**{d['name']}: {html.escape(d['error'])}**")
            continue
        n = d.get("lengths", {})
        notes.append(f"{d['name']}: {d.get('usable', d.get('rows'))} usable rows" +
                     (f", tokens min {n['min']} / max {n['max']}, {n['truncated']} truncated" if n else ""))
        for ex in d.get("examples", []):
            spans.append((f"\n── {d['name']} row {ex['row']} ──\n", "row"))
            spans += marked_spans(ex["text"])
    return spans, "\n\n".join(notes)


def marked_spans(text: str) -> list[tuple[str, str | None]]:
    """The doctor's `[[supervised]]` marks as HighlightedText spans."""
    from tuneforge.data.doctor import CLOSE, OPEN

    out, rest = [], text
    while OPEN in rest:
        before, _, after = rest.partition(OPEN)
        inside, _, rest = after.partition(CLOSE)
        if before:
            out.append((before, None))
        out.append((inside, "supervised"))
    if rest:
        out.append((rest, None))
    return out


def _write_yaml(path: str, text: str) -> None:
    """Whole or not at all: a crash never leaves a half-written config."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def build(gr, t, specs: list[forms.FieldSpec], runs) -> dict:
    """Lay out the tab; returns its components by name (`fields`: one per spec, in order)."""
    by_name = {f.name: f for f in specs}
    comps: dict[str, object] = {}
    top = ("model_name_or_path", "stage", "finetuning_type", "dataset", "max_steps", "output_dir")
    with gr.Row():
        for name in top[:3]:
            comps[name] = _widget(gr, by_name[name], True)
    with gr.Row():
        for name in top[3:]:
            comps[name] = _widget(gr, by_name[name], True)
    with gr.Row():
        start = gr.Button(t("start"), variant="primary", elem_id="tf-start")
        stop = gr.Button(t("stop"), variant="stop", elem_id="tf-stop")
    errors = gr.Markdown("", elem_id="tf-errors")
    group_errors: dict[str, object] = {}  # each accordion's own problems, shown above its fields
    with gr.Row():
        with gr.Column(scale=3):
            groups = ("model", "data", "method", "train", "train_more", "output", "generation", "export", "eval")
            for g in groups:
                members = [f for f in specs if f.group == g and f.name not in comps]
                if not members:
                    continue
                with gr.Accordion(t(f"sec_{g}"), open=g in ("data", "method", "train"), elem_id=f"tf-sec-{g}"):
                    group_errors[g] = gr.Markdown("", elem_id=f"tf-errors-{g}")
                    for f in members:
                        comps[f.name] = _widget(gr, f, forms.applies(f, "sft", "lora"))
        with gr.Column(scale=2):
            estimate = gr.Markdown(ESTIMATE_EMPTY, label=t("estimate"), elem_id="tf-estimate", container=True)
            with gr.Accordion(t("fit"), open=False):
                fit = gr.Markdown("", elem_id="tf-fit")
            preview_btn = gr.Button(t("preview_data"), elem_id="tf-preview-data")
            data_note = gr.Markdown("", elem_id="tf-data-note")
            data_view = gr.HighlightedText(label=t("data_preview"), color_map={"supervised": "green", "row": "gray"},
                                           combine_adjacent=False, show_legend=True, elem_id="tf-data-preview")
    with gr.Accordion(t("preview_yaml"), open=False):
        yaml_btn = gr.Button(t("preview_yaml"), elem_id="tf-preview-yaml")
        yaml_view = gr.Code(language="yaml", label=t("yaml"), elem_id="tf-yaml")
        cli_view = gr.Textbox(label=t("cli"), elem_id="tf-cli", lines=2)
        with gr.Row():
            path = gr.Textbox(label=t("config_path"), value="saves/board_config.yaml", elem_id="tf-config-path", scale=3)
            save_btn = gr.Button(t("save"), elem_id="tf-save")
            load_btn = gr.Button(t("load"), elem_id="tf-load")
        file_note = gr.Markdown("", elem_id="tf-file-note")
    fields = [comps[f.name] for f in specs]
    return dict(fields=fields, comps=comps, start=start, stop=stop, errors=errors, group_errors=group_errors, estimate=estimate, fit=fit,
                preview_btn=preview_btn, data_note=data_note, data_view=data_view, yaml_btn=yaml_btn, yaml_view=yaml_view,
                cli_view=cli_view, path=path, save_btn=save_btn, load_btn=load_btn, file_note=file_note)


def storage_secret(runs) -> str:
    """The BrowserState key material: the same for the same runs folder, so a restarted Board reads the form back."""
    root = getattr(runs, "root", "") or ""
    return hashlib.sha256(f"tuneforge-board:{os.path.abspath(root)}".encode()).hexdigest()[:32]


def wire(gr, ui: dict, specs: list[forms.FieldSpec], runs, form_state, job_sel) -> None:
    """Connect the tab's events."""
    fields = ui["fields"]
    names = [f.name for f in specs]

    def read(values) -> tuple[dict, dict]:
        return forms.config_from_values(specs, list(values))

    def check(cfg: dict, purpose: str) -> tuple[dict, list[str]]:
        from tuneforge import TuneforgeError, config

        try:
            config.from_flat(cfg, purpose=purpose)
        except TuneforgeError as e:
            return forms.problems_by_key(e)
        return {}, []

    groups = list(ui["group_errors"])
    top = {f.name for f in specs if f.elem_id in forms.ELEM_IDS.values()}

    def messages(problems: dict, general: list) -> list:
        """The top box (problems of the top row's keys and of no key) and each accordion's own problems."""
        head = [f"- {m}" for k, m in problems.items() if k in top or k not in names] + [f"- {m}" for m in general]
        per = [[f"⚠ {m}" for k, m in problems.items() if k in names and k not in top and by_spec[k].group == g]
               for g in groups]
        return ["\n".join(head), *["\n\n".join(p) for p in per]]

    by_spec = {f.name: f for f in specs}

    def on_change(*values):
        cfg, bad = read(values)
        problems, general = check(cfg, "infer") if not bad else ({}, [])
        problems = {**problems, **bad}
        est, fit = estimate_text(cfg) if not problems else ("**fix the problems marked on the fields to see the estimate**", "")
        return [est, fit, {"config": cfg}, *messages(problems, general)]

    msg_outs = [ui["errors"], *[ui["group_errors"][g] for g in groups]]
    gr.on([c.change for c in fields], on_change, inputs=fields, outputs=[ui["estimate"], ui["fit"], form_state, *msg_outs],
          trigger_mode="always_last", show_progress="hidden")

    owned = [(i, f) for i, f in enumerate(specs) if f.owner or f.stage_defaults]
    by = {f.name: i for i, f in enumerate(specs)}

    def on_kind(stage, method, prev, *values):
        out = []
        for (i, f), v in zip(owned, values):
            upd = {"visible": forms.applies(f, stage, method)}
            if f.stage_defaults and prev and stage != prev and v == forms.to_widget(f, forms.default_for(f, prev)):
                upd["value"] = forms.to_widget(f, forms.default_for(f, stage))  # untouched: follow the new stage's default
            out.append(gr.update(**upd))
        return [stage, *out]

    stage_prev = gr.State("sft")
    gr.on([fields[by["stage"]].change, fields[by["finetuning_type"]].change], on_kind,
          inputs=[fields[by["stage"]], fields[by["finetuning_type"]], stage_prev, *[fields[i] for i, _ in owned]],
          outputs=[stage_prev, *[fields[i] for i, _ in owned]], show_progress="hidden")

    def on_dataset_dir(folder, chosen):
        names_, error = dataset_names(folder)
        note = f"**{html.escape(error)}**" if error else ""
        return gr.update(choices=sorted(set(names_) | set(chosen or []))), note

    if "dataset_dir" in by:
        fields[by["dataset_dir"]].change(on_dataset_dir, inputs=[fields[by["dataset_dir"]], fields[by["dataset"]]],
                                         outputs=[fields[by["dataset"]], ui["data_note"]], show_progress="hidden")

    def on_preview(*values):
        cfg, bad = read(values)
        if bad:
            return [], "\n".join(bad.values())
        return preview_data(cfg)

    gr.on([ui["preview_btn"].click, fields[by["dataset"]].change], on_preview, inputs=fields,
          outputs=[ui["data_view"], ui["data_note"]], trigger_mode="always_last")

    def on_yaml(*values):
        cfg, bad = read(values)
        return forms.to_yaml(cfg), forms.cli_overrides(cfg)

    ui["yaml_btn"].click(on_yaml, inputs=fields, outputs=[ui["yaml_view"], ui["cli_view"]])

    def on_save(path, *values):
        cfg, bad = read(values)
        if bad:
            return "cannot save: " + "; ".join(bad.values())
        if not path:
            return "give a file name to save to"
        _write_yaml(path, forms.to_yaml(cfg))
        return f"saved `{path}`: run it with `tuneforge train {path}`"

    ui["save_btn"].click(on_save, inputs=[ui["path"], *fields], outputs=ui["file_note"])

    def on_load(path):
        from tuneforge import TuneforgeError
        from tuneforge.config import read_yaml

        try:
            flat = read_yaml(path)
            values, unknown = forms.values_from_config(specs, flat)
        except TuneforgeError as e:
            return [f"**cannot load:** {html.escape(str(e))}", *[gr.update() for _ in specs]]
        note = f"loaded `{path}`" + (f"; keys the form has no field for (not used): {', '.join(unknown)}" if unknown else "")
        return [note, *values]

    ui["load_btn"].click(on_load, inputs=ui["path"], outputs=[ui["file_note"], *fields])

    def on_start(*values):
        from tuneforge import TuneforgeError
        from tuneforge.config.errors import ConfigError

        cfg, bad = read(values)
        if bad:
            return [gr.update(), *messages(bad, ["cannot start: fix the marked fields"])]
        try:
            job = runs.start(cfg)
        except ConfigError as e:
            problems, general = forms.problems_by_key(e)
            return [gr.update(), *messages(problems, ["cannot start: fix the marked fields", *general])]
        except TuneforgeError as e:
            return [gr.update(), *messages({}, [f"cannot start: {e}"])]
        ids = [j.id for j in runs.list()]
        return [gr.update(choices=ids, value=job.id), *messages({}, [f"started `{job.id}` ({job.status})"])]

    ui["on_change"] = on_change
    ui["change_outputs"] = [ui["estimate"], ui["fit"], form_state, *msg_outs]
    ui["start"].click(on_start, inputs=fields, outputs=[job_sel, *msg_outs])

    def on_stop(job_id):
        from tuneforge import TuneforgeError

        if not job_id:
            return "no run selected"
        try:
            job = runs.stop(job_id, wait=False)  # the page stays live; the monitor shows `stopping`, then `stopped`
        except TuneforgeError as e:
            return f"**cannot stop:** {html.escape(str(e))}"
        return f"`{job.id}`: {job.phase or job.status}"

    ui["stop"].click(on_stop, inputs=job_sel, outputs=ui["errors"])


def restore(specs: list[forms.FieldSpec], runs, saved) -> list:
    """The form's values when a page opens: the browser's saved form, else the newest run's config, else defaults.
    None for a field already at its initial value: it is left alone (setting 300 fields would fire 300 changes)."""
    cfg = (saved or {}).get("config") if isinstance(saved, dict) else None
    if not cfg:
        try:
            jobs = runs.list()
        except Exception:  # a broken runs folder must not leave the page blank
            jobs = []
        cfg = jobs[0].config if jobs else None
    if not cfg:
        return [None] * len(specs)
    values = forms.values_from_config(specs, cfg)[0]
    return [v if not forms.same(v, f.value) else None for f, v in zip(specs, values)]


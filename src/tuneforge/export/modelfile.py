"""An Ollama Modelfile whose TEMPLATE is derived from the tokenizer's Jinja chat template.

The Jinja template is rendered with marker contents; the text around each marker gives every role's prefix
and suffix, which become a Go template. Templates that do not wrap turns this way get no TEMPLATE line."""

S, U, A, U2 = "\x01SYS\x01", "\x01USR\x01", "\x01AST\x01", "\x01USR2\x01"


def _wrappers(tok) -> dict | None:
    def render(msgs, gen=False):
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    sys_m, usr, ast, usr2 = ({"role": r, "content": c} for r, c in (("system", S), ("user", U), ("assistant", A), ("user", U2)))
    try:
        system_prefix, system_suffix = render([sys_m]).split(S)
        assistant_suffix = render([sys_m, usr, ast]).split(A)[1]
        full = render([sys_m, usr, ast, usr2])
        prompt, gen = render([sys_m, usr]), render([sys_m, usr], gen=True)
    except Exception:  # templates that refuse a lone system message, markers they mangle, ...
        return None
    if not gen.startswith(prompt) or not all(full.count(m) == 1 for m in (S, U, A, U2)):
        return None
    assistant_prefix = gen[len(prompt):]
    head, rest = full.split(S)
    between_su, rest = rest.split(U)
    between_ua, rest = rest.split(A)
    between_au2, user_suffix = rest.split(U2)
    user_prefix = between_su[len(system_suffix):]
    consistent = (head == system_prefix and between_su.startswith(system_suffix) and between_ua == user_suffix + assistant_prefix
                  and between_au2 == assistant_suffix + user_prefix)
    if not consistent:
        return None
    return {"system_prefix": system_prefix, "system_suffix": system_suffix, "user_prefix": user_prefix, "user_suffix": user_suffix,
            "assistant_prefix": assistant_prefix, "assistant_suffix": assistant_suffix}


def _default_system(tok, w: dict) -> str | None:
    """The system prompt the template adds when a conversation has none (SmolLM2 does), for Ollama's SYSTEM."""
    text = tok.apply_chat_template([{"role": "user", "content": U}], tokenize=False)
    if w["system_prefix"] and text.startswith(w["system_prefix"]) and w["system_suffix"] in text:
        inner = text[len(w["system_prefix"]):].split(w["system_suffix"])[0]
        return inner if U not in inner else None
    return None


def _go(text: str) -> str:
    return text.replace("{{", "{{ `{{` }}")


def ollama_modelfile(tok, source: str = ".", generation=None) -> str:
    """Modelfile text: FROM `source` (the exported folder, or `./model.gguf`), TEMPLATE from the chat template, stop
    on the end-of-turn token, and the chat settings of a GenerationSection as PARAMETERs."""
    lines = ["# Ollama Modelfile written by tuneforge export:  ollama create my-model -f Modelfile", f"FROM {source}"]
    w = _wrappers(tok) if tok.chat_template else None
    if w:
        # no `{{-` trim markers: they would eat the newlines that are part of the turn wrappers
        template = (
            "{{ if .System }}" + _go(w["system_prefix"]) + "{{ .System }}" + _go(w["system_suffix"]) + "{{ end }}"
            "{{ range .Messages }}{{ if eq .Role \"user\" }}" + _go(w["user_prefix"]) + "{{ .Content }}" + _go(w["user_suffix"])
            + "{{ else if eq .Role \"assistant\" }}" + _go(w["assistant_prefix"]) + "{{ .Content }}" + _go(w["assistant_suffix"])
            + "{{ end }}{{ end }}" + _go(w["assistant_prefix"])
        )
        lines.append(f'TEMPLATE """{template}"""')
        default = _default_system(tok, w)
        if default:
            lines.append(f'SYSTEM """{default}"""')
    else:
        lines.append("# the chat template does not wrap each turn in fixed text; write TEMPLATE by hand")
    stops = [t for t in {tok.eos_token, *(w and [w["assistant_suffix"].strip()] or [])} if t]
    for stop in sorted(stops):
        lines.append(f'PARAMETER stop "{stop}"')
    if generation is not None:
        lines += [f"PARAMETER temperature {generation.temperature}", f"PARAMETER top_p {generation.top_p}",
                  f"PARAMETER top_k {generation.top_k}", f"PARAMETER repeat_penalty {generation.repetition_penalty}"]
    return "\n".join(lines) + "\n"

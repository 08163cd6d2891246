"""Write data/pydoc_alpaca.json: alpaca rows whose answers are Python standard-library docstrings.

Real English of varied length (30 to ~230 tokens with the SmolLM2 template), made offline, so the speed
benchmarks train on lengths that make padding matter. The file is committed; rerun only to regenerate it
(docstrings differ a little between Python versions).  usage: python benchmarks/make_pydoc_data.py [N]
"""

import importlib
import inspect
import json
import pathlib
import sys

MODULES = ["json", "os.path", "shutil", "itertools", "functools", "collections", "textwrap", "string", "random",
           "statistics", "math", "heapq", "bisect", "re", "datetime", "pathlib", "csv", "hashlib", "base64", "zlib",
           "fnmatch", "glob", "tempfile", "uuid", "difflib", "operator", "copy", "pprint", "secrets", "calendar"]
QUESTIONS = ["What does `{name}` do in Python?", "Explain the Python function `{name}`.",
             "How would you describe `{name}` from the standard library?"]


def rows(limit: int) -> list[dict]:
    out = []
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        taken = 0
        for attr in sorted(dir(mod)):
            obj = getattr(mod, attr)
            if attr.startswith("_") or not callable(obj) or getattr(obj, "__module__", "").split(".")[0] not in (
                    mod_name.split(".")[0], "posixpath", "_collections", "_functools", "_heapq", "_bisect",
                    "_random", "_operator", "_datetime", "_json", "_csv", "_sha2", "_hashlib", "_sre"):
                continue
            doc = inspect.getdoc(obj) or ""
            words = doc.split()
            if len(words) < 12:
                continue
            text = " ".join(words[:100])  # keeps every row under the 256-token cutoff with the chat template
            name = f"{mod_name}.{attr}"
            out.append({"instruction": QUESTIONS[len(out) % len(QUESTIONS)].format(name=name), "input": "", "output": text})
            taken += 1
            if taken == 4:
                break
    return out[:limit]


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 90
    data = rows(n)
    path = pathlib.Path(__file__).resolve().parent.parent / "data" / "pydoc_alpaca.json"
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(data)} rows to {path}")

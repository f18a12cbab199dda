import dataclasses, typing, sys
sys.path.insert(0, '.')
from steno_exportd import config as C

def emit(cls, prefix, out, array=False):
    hints = typing.get_type_hints(cls)
    scal, subs = [], []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if C._is_dataclass_type(tp):
            subs.append((f, tp, False))
        elif f.metadata.get("table_of"):
            subs.append((f, f.metadata["table_of"], True))
        else:
            scal.append((f, tp))
    for f, tp in scal:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        extra = ""
        if f.metadata.get("choices"): extra = f" One of: {', '.join(map(str, f.metadata['choices']))}."
        if f.metadata.get("items"): extra = f" Items from: {', '.join(f.metadata['items'])}."
        out.append(f"# {f.metadata['doc']}{extra}")
        out.append(f"# type: {C._type_name(tp)}; default: {C._toml_value(default)}")
        out.append(f"{'# ' if array else ''}{f.name} = {C._toml_value(default)}")
        out.append("")
    for f, tp, is_arr in subs:
        name = f"{prefix}.{f.name}" if prefix else f.name
        if f.metadata.get("doc"):
            out.append(f"# ---- {f.metadata['doc']}")
        if is_arr:
            out.append(f"# An array of tables; repeat the block for each entry (none by default):")
            out.append(f"# [[{name}]]")
        else:
            out.append(f"[{name}]")
        emit(tp, name, out, array or is_arr)

out = ["# steno-exportd configuration: /etc/steno-exportd/config.toml",
       "# Every key is shown with its type and default. Check a file with:",
       "#   steno-exportd check-config /etc/steno-exportd/config.toml",
       "# Apply a change with `systemctl reload steno-exportd` (a bad file keeps the old config).", ""]
emit(C.Config, "", out)
open("config/config.toml", "w").write("\n".join(out).rstrip() + "\n")

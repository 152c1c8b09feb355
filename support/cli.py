"""support/cli.py: train.py's command line. `--key=value` for any field of any settings section.

The settings are dataclasses whose fields carry their help text (`knob`): train.Config (PRIME's
own), toy.task.ToyConfig, support.sft.SFTConfig and support.memory.PlanConfig. Every field of every
section is a flag, nanoGPT-style, with no second list of options to keep in step with the
dataclasses; a preset is a dict of field values over any sections. Field names are unique across
sections, so a flag names its field alone and `--print_config` prints one flat JSON object (the
form train.py writes to <out_dir>/config.json).
"""

import dataclasses
import json
from dataclasses import field


def knob(default, help):
    """A settings field with its help text (printed by --help)."""
    return field(default=default, metadata={"help": help})


def parse(argv, sections, presets, prog, check=None):
    """Instances of `sections` (dataclass types) from argv: --key=value for any field (type-checked),
    --preset=NAME (a field of the first section; the preset's values first, the flags over them, so
    --preset=eurus2-7b-prime --steps=10 is the recipe cut short), --print_config (print the resolved
    settings as JSON and exit), --help. Each section's `problems()` (a list of messages, if it has
    the method) and `check(*settings)` (the same, across sections) run before anything starts:
    every bad value is reported at once, so a 7B run does not fail on a typo after minutes of
    loading."""
    owner = {f.name: (i, f.type) for i, section in enumerate(sections) for f in dataclasses.fields(section)}
    values, print_config = {}, False
    for arg in argv:
        if arg in ("--help", "-h"):
            print_help(sections, presets, prog)
            raise SystemExit(0)
        if arg == "--print_config":
            print_config = True
            continue
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"{prog}: expected --key=value, got {arg!r} (--help lists the fields)")
        key, value = arg[2:].split("=", 1)
        if key not in owner:
            raise SystemExit(f"{prog}: unknown option --{key} (--help lists the fields)")
        kind = owner[key][1]  # bool, int, float or str
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                values[key] = value.lower() in ("true", "1")
            else:
                values[key] = kind(value)
        except ValueError:
            raise SystemExit(f"{prog}: --{key} expects a {kind.__name__}, got {value!r}") from None
    preset = values.get("preset", sections[0]().preset)
    if preset not in presets:
        raise SystemExit(f"{prog}: unknown preset {preset!r}; choose from {sorted(presets)}")
    merged = {**presets[preset], **values}
    settings = tuple(section(**{k: v for k, v in merged.items() if owner[k][0] == i})
                     for i, section in enumerate(sections))
    if print_config:
        print(json.dumps(flat(settings), indent=2))
        raise SystemExit(0)
    problems = [p for s in settings if hasattr(s, "problems") for p in s.problems()]
    problems += check(*settings) if check else []
    if problems:
        raise SystemExit(f"{prog}: " + "; ".join(problems))
    return settings


def flat(settings):
    """All sections' fields as one dict (what --print_config prints and config.json holds)."""
    return {k: v for s in settings for k, v in dataclasses.asdict(s).items()}


def out_of(name, value, choices):
    """The message for a setting outside its choices, or None."""
    return None if value in choices else f"--{name} must be one of {', '.join(choices)}, got {value!r}"


def print_help(sections, presets, prog):
    """Every field, section by section, with its meaning and its value in each preset."""
    for section in sections:
        print(f"\n{section.__name__}: {section.__doc__.strip().splitlines()[0]}")
        defaults = section()
        for f in dataclasses.fields(section):
            values = ", ".join(f"{name} {presets[name].get(f.name, getattr(defaults, f.name))!r}" for name in presets) \
                if f.name != "preset" else "one of: " + ", ".join(presets)
            print(f"  --{f.name}=<{f.type.__name__}>  [{values}]\n      {f.metadata['help']}")
    print(f"\n{prog}: --print_config prints the resolved settings as JSON")

"""``--help`` of every entrypoint: its config groups with their options, the other entrypoints, recipes.

Hydra's stock help lists every folder of conf/ and of the ConfigStore as a group, including the
accelerate launcher files and the typed schemas, which are not choices a user makes on the command
line. This text is built from the same folders, so a new model or dataset YAML shows up by itself;
each entry config points ``hydra.help.template`` at it through the ``t2v_help`` resolver.
"""

from __future__ import annotations

from pathlib import Path

# Absolute, for every entrypoint's @hydra.main: run as a console script (t2v-train), Hydra would read
# a relative config_path against the script in the venv's bin/ and find no config.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Per entrypoint: (what it does, its config groups, recipes).
ENTRYPOINTS = {
    "train": ("fine-tune a text-to-video model (a multirun with -m or sweep=...)",
              ("model", "dataset", "optimizer", "precision", "gpu", "logger", "experiment", "sweep",
               "hparams_search"),
              ("python -m t2v_exp.train                      # tiny ModelScope base, LoRA, domain shift, before/after table",
               "python -m t2v_exp.train model=cogvideox dataset=ubc_fashion gpu=a100_80gb precision=bf16",
               "python -m t2v_exp.train -m experiment=modelscope_ssv2,cogvideox_ubc_fashion,animatediff_anime")),
    "evaluate": ("score a training run, a base model or a folder of videos",
                 ("model", "dataset", "precision", "gpu", "logger"),
                 ("python -m t2v_exp.evaluate run_dir=outputs/runs/<run>",
                  "python -m t2v_exp.evaluate model=cogvideox_tiny",
                  "python -m t2v_exp.evaluate videos=DIR reference=DIR metrics='[fvd,temporal]'")),
    "generate": ("videos from a training run or a base model, with your prompts",
                 ("model", "precision", "gpu"),
                 ('python -m t2v_exp.generate run_dir=outputs/runs/<run> prompt="a red circle moving up"',
                  "python -m t2v_exp.generate run_dir=outputs/runs/<run> prompts=prompts.txt seeds_per_prompt=4",
                  'python -m t2v_exp.generate model=wan_tiny prompt="a blue square moving down" num_inference_steps=10')),
    "report": ("the comparison report (report.md / report.html) of a sweep directory",
               (),
               ("python -m t2v_exp.report sweep_dir=outputs/sweeps/<sweep>",
                "python -m t2v_exp.report sweep_dir=outputs/sweeps/<sweep> out_dir=/tmp/report",
                "python -m t2v_exp.train sweep=compare_models_tiny   # writes the report itself")),
}
CONSOLE_SCRIPTS = {"train": "t2v-train", "evaluate": "t2v-evaluate", "generate": "t2v-generate",
                   "report": "t2v-report"}


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def help_text(entrypoint: str) -> str:
    purpose, groups, recipes = ENTRYPOINTS[entrypoint]
    lines = [f"python -m t2v_exp.{entrypoint} ({CONSOLE_SCRIPTS[entrypoint]}): {purpose}", ""]
    if groups:
        lines.append("Config groups (group=option; each YAML's first lines say what it sets):")
        lines += [f"  {group:<15} {', '.join(group_options(group))}" for group in groups]
        lines.append("")
    lines.append("Any key can be overridden: key=value (e.g. train.max_steps=500 optimizer.lr=1e-4), +key=value")
    lines.append("adds a key the config lacks. --cfg job prints the composed config; --hydra-help lists Hydra's flags.")
    lines += ["", "Entrypoints:"]
    for name, (what, _, _) in ENTRYPOINTS.items():
        lines.append(f"  python -m t2v_exp.{name:<9} ({CONSOLE_SCRIPTS[name]:<12}) {what}")
    lines.append(f"  python -m t2v_exp.{'weights':<9} ({'t2v-weights':<12}) fetch the FVD detector weights (make install does)")
    lines += ["", "Recipes:", *(f"  {r}" for r in recipes), ""]
    return "\n".join(lines)

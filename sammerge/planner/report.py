"""The planner's results as data (:func:`plan_json`) and as one self-contained HTML page to take to a meeting
(:func:`plan_html`: inline CSS, the loss matrix and the predictor scatters drawn as inline SVG, no network)."""
from __future__ import annotations

import html
import json
from typing import Mapping, Sequence

from sammerge.merging import MergeSpec, to_mergekit_yaml
from sammerge.merging.mergekit import mergekit_unavailable
from sammerge.planner.compat import GroupResult
from sammerge.planner.cost import serving_cost, training_cost
from sammerge.planner.figures import matrix_svg, scatter_svg
from sammerge.planner.plan import Plan
from sammerge.planner.predictors import predictor_table

__all__ = ["plan_json", "plan_html", "group_spec"]


def group_spec(zoo, variant: str, group: GroupResult) -> MergeSpec:
    """The exact merge of a planned group (its method at its λ, every task on ``variant``)."""
    params = {"lambda": group.lam} if group.lam is not None else {}
    return MergeSpec.for_zoo(zoo, group.method, params, variant, tasks=list(group.tasks),
                             notes=f"planned group: worst loss {group.worst_loss:.2f} points vs individual")


def plan_json(zoo, plans: Mapping[str, Plan], results: Mapping[str, Mapping[tuple, GroupResult]],
              settings: Mapping, costs: bool = True, progress=None) -> dict:
    """Everything the report shows, per variant: individual accuracy, every measured group, the plan and its specs,
    and how well each cheap signal of the weights predicts the measured pairwise loss."""
    out = {"zoo": str(zoo.path), "checkpoints": zoo.checkpoint_hashes(), "settings": dict(settings), "variants": {}}
    for variant, plan in plans.items():
        res = results[variant]
        out["variants"][variant] = {
            "individual": {t: res[(t,)].individual[t] for t in zoo.tasks},
            "groups": {"+".join(g): {"method": r.method, "lambda": r.lam, "merged": r.merged,
                                     "loss_points": r.loss_points, "worst_loss": r.worst_loss}
                       for g, r in res.items() if len(g) > 1},
            "plan": {"tolerance": plan.tolerance, "floors": dict(plan.floors), "search": plan.search,
                     "models": plan.n_models, "below_floor": plan.below_floor,
                     "stages": [{"tasks": list(g.tasks), "method": g.method, "lambda": g.lam,
                                 "worst_loss": g.worst_loss,
                                 "spec": group_spec(zoo, variant, g).to_dict()} for g in plan.stages],
                     "separate": plan.separate},
            "predictors": predictor_table(zoo, variant, res, progress)}
        if costs:
            out["variants"][variant]["serving"] = serving_cost(zoo, plan, requests_per_day=settings.get(
                "requests_per_day"), gpu_hour_cost=settings.get("gpu_hour_cost"))
    if costs:
        out["training"] = training_cost(zoo)
        out["break_even"] = break_even(out, settings)
    return out


def break_even(data: Mapping, settings: Mapping) -> dict | None:
    """Days until SAM's extra training cost (measured wall time here × price) is paid back by the cheaper serving of
    its plan (fewer forwards per image than plain's), when both are planned and prices are given; else None."""
    price, v = settings.get("gpu_hour_cost"), data["variants"]
    if not price or not settings.get("requests_per_day") or not {"plain", "sam"} <= set(v):
        return None
    extra = (data["training"]["sam"]["wall_time_s"] - data["training"]["plain"]["wall_time_s"]) / 3600 * price
    saving = v["plain"]["serving"]["options"]["plan"]["cost_per_day"] - v["sam"]["serving"]["options"]["plan"]["cost_per_day"]
    return {"extra_training_cost": extra, "daily_saving": saving,
            "days": extra / saving if saving > 0 else None}


def _table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """An HTML table; cells are escaped unless given as ``Markup`` (already HTML)."""
    def cell(x):
        return x if isinstance(x, Markup) else html.escape(str(x))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(x)}</td>" for x in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def fmt(x, spec: str) -> str:
    """``x`` formatted, or "—" when there is no number (a constant signal has no rank correlation)."""
    return "—" if x is None else format(x, spec)


class Markup(str):
    """Text that is HTML already (not escaped again by :func:`_table`)."""


def plan_html(zoo, data: Mapping, results: Mapping[str, Mapping[tuple, GroupResult]]) -> str:
    """The report (``data`` = :func:`plan_json`): models, the loss matrix, every group, the plans side by side, the
    specs of each planned group (our YAML and mergekit YAML), the settings and hashes that reproduce it."""
    esc = html.escape
    tol = data["settings"]["tolerance"]
    floors = data["settings"].get("floors") or {}
    floor_text = ("; and these tasks keep at least: " + ", ".join(f"{esc(t)} {v:g} %" for t, v in floors.items())
                  if floors else "")
    search = {"every subset": "every subset of tasks measured, the plan an exact search over them",
              "pairs": "pairs measured, the plan an exact search over pairs",
              "greedy": "a greedy search (pairs, then groups grown one task at a time; may need more models than "
                        "an exact plan)"}[data["settings"]["groups"]]
    sec = [f"<h1>Merge plan for {esc(zoo.manifest.name)}</h1>",
           f"<p>Tolerance: no task loses more than <b>{tol:g} points</b> of test accuracy against its own "
           f"fine-tuned model{floor_text}. Methods tried per group: {esc(', '.join(data['settings']['methods']))}, "
           f"each at its best shared λ on the validation images of the group's tasks. Groups: {esc(search)}.</p>",
           '<h2 id="plans">Plans</h2><table><tr><th>variant</th><th>models needed</th><th>stages (merged groups)</th>'
           "<th>kept separate</th></tr>"]
    for v, d in data["variants"].items():
        stages = "<br>".join(f"stage {i + 1}: {esc(' + '.join(s['tasks']))} ({esc(s['method'])}, λ {s['lambda']:g}; "
                             f"worst loss {s['worst_loss']:.1f} pts)" for i, s in enumerate(d["plan"]["stages"]))
        sec.append(f"<tr><td>{esc(v)}</td><td>{d['plan']['models']} of {len(zoo.tasks)}</td><td>{stages or '—'}</td>"
                   f"<td>{esc(', '.join(d['plan']['separate'])) or '—'}</td></tr>")
    sec.append("</table>")
    for v, d in data["variants"].items():
        if d["plan"].get("below_floor"):
            sec.append(f"<p><b>{esc(v)}</b>: the own model of {esc(', '.join(d['plan']['below_floor']))} is already "
                       "below its floor; it stays separate and misses the floor.</p>")
    sec.append('<h2 id="models">Models</h2><table><tr><th>task</th>'
               + "".join(f"<th>{esc(v)} individual</th>" for v in data["variants"]) + "</tr>")
    for t in zoo.tasks:
        sec.append(f"<tr><td>{esc(t)}</td>" + "".join(f"<td>{100 * d['individual'][t]:.1f} %</td>"
                                                     for d in data["variants"].values()) + "</tr>")
    sec.append("</table>")
    sec.append('<h2 id="matrix">Pairwise compatibility</h2><p>Loss in points of the row task when merged with the '
               "column task (red: above the tolerance).</p>")
    for v in data["variants"]:
        sec.append(f"<h3>{esc(v)}</h3>" + matrix_svg(list(zoo.tasks), results[v], tol))
    sec.append('<h2 id="groups">Every measured group</h2>' + _table(
        ["variant", "tasks", "method", "λ", "worst loss (pts)", "loss per task (pts)"],
        [[v, name, g["method"], f"{g['lambda']:g}", f"{g['worst_loss']:.1f}",
          ", ".join(f"{t} {x:+.1f}" for t, x in g["loss_points"].items())]
         for v, d in data["variants"].items()
         for name, g in sorted(d["groups"].items(), key=lambda kv: kv[1]["worst_loss"])]))
    sec.append('<h2 id="predictors">Can it be predicted from the weights?</h2><p>Spearman rank correlation of each '
               "signal of a pair of task vectors with the pair's measured mean loss, and a permutation p-value (small "
               "numbers of pairs rarely show anything: read the p-value).</p>" + _table(
                   ["variant", "signal", "ρ", "p", "pairs"],
                   [[v, name, fmt(r["rho"], "+.2f"), fmt(r["p"], ".3f"), r["n"]]
                    for v, d in data["variants"].items() for name, r in d["predictors"]["signals"].items()]))
    for v, d in data["variants"].items():
        pts = d["predictors"]["pairs"]
        figs = [scatter_svg([q[name] for q in pts], [q["loss"] for q in pts], ["+".join(q["tasks"]) for q in pts],
                            name, "mean loss of the pair (pts)",
                            f"{v}: ρ {fmt(r['rho'], '+.2f')}, p {fmt(r['p'], '.3f')}")
                for name, r in d["predictors"]["signals"].items()]
        sec.append(f"<h3>{esc(v)}: each signal against the measured loss</h3><div>{''.join(figs)}</div>")
    if "training" in data:
        sec.append('<h2 id="cost">Cost</h2><p>Training, per variant (this zoo\'s records: wall time on the machine '
                   "that built it, steps, forward-backward passes — SAM takes two per step):</p>" + _table(
                       ["variant", "wall time (s)", "steps", "passes"],
                       [[v, f"{c['wall_time_s']:.0f}", c["steps"], c["forward_backward_passes"]]
                        for v, c in data["training"].items()]))
        sec.append("<p>Serving every task on each image (measured on this machine): separate models need one forward "
                   "per task, the plan one per group, a single merged model one forward for all heads.</p>" + _table(
                       ["variant", "option", "encoders", "weights (MB)", "images/s", "cost per day"],
                       [[v, name, o["encoders"], f"{o['weights_bytes'] / 1e6:.2f}", f"{o['images_per_s']:.0f}",
                         f"{o['cost_per_day']:.2f}" if "cost_per_day" in o
                         else "— (give --requests-per-day and --gpu-hour-cost)"]
                        for v, d in data["variants"].items() for name, o in d["serving"]["options"].items()]))
        be = data.get("break_even")
        if be:
            sec.append(f"<p>Break-even of SAM's extra training ({be['extra_training_cost']:.2f}) against its plan's "
                       f"serving saving ({be['daily_saving']:+.2f} per day): "
                       + (f"<b>{be['days']:.1f} days</b>.</p>" if be["days"] is not None else
                          "<b>never</b> — SAM's plan serves no cheaper than plain's.</p>"))
    sec.append('<h2 id="specs">Merge specs of the planned groups</h2>')
    for v, d in data["variants"].items():
        for s in d["plan"]["stages"]:
            spec = MergeSpec.from_dict(s["spec"])
            problem = mergekit_unavailable(spec)
            mk = to_mergekit_yaml(spec) if problem is None else f"# {problem}"
            sec.append(f"<h3>{esc(v)}: {esc(' + '.join(s['tasks']))}</h3><p>sammerge YAML</p><pre>{esc(spec.to_yaml())}"
                       f"</pre><p>mergekit YAML</p><pre>{esc(mk)}</pre>")
    sec.append('<h2 id="reproduce">Settings and hashes</h2><pre>'
               + esc(json.dumps({"settings": data["settings"], "checkpoints": data["checkpoints"]}, indent=1))
               + "</pre>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left;vertical-align:top}pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>sammerge plan</title><style>{style}</style>"
            f"</head><body>{''.join(sec)}</body></html>")

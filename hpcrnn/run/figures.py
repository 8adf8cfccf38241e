"""How held-out figures read wherever they are shown (training log, status, sweep table): perplexity to two
decimals, accuracy in percent, the protocol named."""

from __future__ import annotations


def figures_line(final: dict, own: str) -> str:
    """The final figures as the log, status and the sweep table show them: perplexity to two decimals,
    accuracy in percent, each protocol named (the run's own first, then the standard one)."""

    def one(figs: dict) -> str:
        return ", ".join(f"{k} ppl {v['ppl']:.2f} acc {v['acc']:.1%}" for k, v in figs.items())

    own_figs = {k: v for k, v in final.items() if k != "standard"}
    parts = [f"{one(own_figs)} ({own} protocol)"] if own_figs else []
    if own != "standard" and final.get("standard"):
        parts.append(f"{one(final['standard'])} (standard protocol)")
    return "; ".join(parts) or "no held-out text"


def own_protocol(metrics: list[dict]) -> str | None:
    """The protocol of the run's validations (its own, which meta.json's ``val_loss`` is measured by): the
    periodic ones', else the first final one (the run's own protocol is evaluated first)."""
    val = [r for r in metrics if r.get("split") == "val" and r.get("protocol")]
    periodic = [r for r in val if not r.get("final")]
    if periodic:
        return periodic[-1]["protocol"]
    return val[0]["protocol"] if val else None


def is_estimate(record: dict) -> bool:
    """Whether a validation record measured a subset of the split (``train.eval_batches``); final ones never."""
    return bool(record.get("estimate")) and not record.get("final")


def latest_validation(metrics: list[dict]) -> dict | None:
    """The newest validation in the run's own protocol: the one figure the log, status, the sweep table and
    the plot show as "validation perplexity" ({ppl, acc, step, protocol, estimate})."""
    own = own_protocol(metrics)
    val = [r for r in metrics if r.get("split") == "val" and r.get("ppl") is not None and r.get("protocol") == own]
    if not val:
        return None
    r = val[-1]
    return {"ppl": r["ppl"], "acc": r.get("acc"), "step": r.get("step"), "protocol": own, "estimate": is_estimate(r)}


def final_figures(metrics: list[dict]) -> dict:
    """The final evaluation as training's ``final`` holds it: ``{split: {ppl, acc}}`` in the run's own
    protocol and ``{"standard": {split: ...}}``; {} before the run is done."""
    own = own_protocol(metrics)
    final: dict = {}
    standard: dict = {}
    for r in metrics:
        if r.get("final") and r.get("ppl") is not None and r.get("split") in ("val", "test"):
            figs = {"ppl": r["ppl"], "acc": r.get("acc")}
            if r.get("protocol") == own:
                final[r["split"]] = figs
            if r.get("protocol") == "standard":
                standard[r["split"]] = figs
    if final or standard:
        final["standard"] = standard
    return final


def validation_line(v: dict | None) -> str:
    if not v:
        return "not measured yet"
    how = "estimate on a subset of the split" if v.get("estimate") else "full split"
    acc = "" if v.get("acc") is None else f", acc {v['acc']:.1%}"
    return f"{v['ppl']:.2f}{acc} at step {v['step']} ({v['protocol']} protocol, {how})"

"""``kdmsi-geo info``: a checkpoint's card, for people or (``--json``) for programs.

Programs such as the QGIS plugin read the card through this command rather than the
file, so the checkpoint format stays the core's business.
"""

from __future__ import annotations

import json

import click


def card_record(model: str | None) -> dict:
    """The card as the checkpoint stores it, plus its path, the stride of the change map's grid
    (:attr:`~kdmsi_core.checkpoint.ModelCard.map_stride`) and the card of the first stage
    it carries (None when it carries none)."""
    from kdmsi_core.checkpoint import default_model_path, has_first_stage, read_card

    path = model or default_model_path()
    card = read_card(path)
    first = json.loads(read_card(path, first_stage=True).to_json()) \
        if has_first_stage(path) else None
    return {"path": str(path), **json.loads(card.to_json()),
            "output_stride": card.map_stride, "first_stage": first}


def _refined_threshold(refine: dict | None) -> str:
    """The refined maps' own threshold, in words, where the card has one."""
    if not refine or refine.get("threshold") is None:
        return ""
    return (f"; {refine['threshold']:.3f} on the refined maps, which flag as many validation "
            "pixels there")


def card_lines(record: dict) -> list[str]:
    """A few lines a person reads: what the model is, what it expects, how it was trained."""
    training = record.get("training", {})
    config = training.get("config", {})
    lines = [
        f"Model: {record['path']}",
        f"Kind: {record['kind']} ({record['network']['backbone']}, "
        f"{record['network']['combination']} fusion, output stride {record['output_stride']})",
        f"Bands: {record['bands']['count']} ({', '.join(record['bands']['names'])})",
        f"Tile size: {record['tile_size']} px; scales: "
        f"{', '.join(str(s) for s in record['scales'])}",
        f"Threshold: {record['threshold']:.3f}" + _refined_threshold(record.get("refine")),
    ]
    lines.append(f"Input scaling: {_scaling(record['normalization'])}")
    pixel, factor = training.get("pixel_size"), training.get("resolution_factor")
    source = (f"its training data's ({pixel * factor:g}-m pixels reduced to it)" if factor
              else "its training data's")
    lines.append(f"Pixel size: {pixel:g} m, {source}; finer imagery is read at it"
                 if pixel else "Pixel size: not recorded; imagery runs on its own pixels")
    refine = record.get("refine")
    lines.append(f"Outline refinement: guided filter, both dates as guide, radius "
                 f"{refine['radius']} px, eps {refine['eps']:g}"
                 + (f" (pixels of {pixel:g} m: wider on finer imagery, the same ground)"
                    if pixel else "") if refine else "Outline refinement: none")
    if training:
        epochs = training.get("epochs") or config.get("epochs") or "?"
        lines.append(f"Trained: {epochs} epoch{'' if epochs == 1 else 's'}, best epoch "
                     f"{training.get('best_epoch', '?')}, {training.get('train_tiles', '?')} "
                     f"tiles ({training.get('train_changed', '?')} changed), "
                     f"{training.get('seconds', '?')} s"
                     + (f"; round {training['round']} of {training['rounds']}, on the "
                        "pseudo labels of the round before" if training.get("round", 1) > 1
                        else ""))
    first = record.get("first_stage")
    if first:
        lines.append(f"Carries its first stage: {first['kind']} ({first['network']['backbone']}, "
                     f"{first['network']['combination']} fusion, threshold "
                     f"{first['threshold']:.3f}), where `train --init` starts")
    return lines


def _scaling(norm: dict) -> str:
    """How the model's inputs are scaled (:func:`kdmsi_core.normalize.for_data`)."""
    from kdmsi_core.normalize import Normalization, is_eight_bit

    if not is_eight_bit(Normalization.from_dict(norm)):
        return ("the band ranges it was trained with, " + ", ".join(
            f"{lo:g}..{hi:g}" for lo, hi in zip(norm["low"], norm["high"], strict=True)))
    ref = norm.get("reference")
    where = (f"at {min(ref['low']):.0%}-{max(ref['low']):.0%} and {min(ref['high']):.0%}-"
             f"{max(ref['high']):.0%} of the 8-bit range, where its training data's fell" if ref
             else "at 0 and 255")
    return ("8-bit data as they are; other data stretched per band, their 2nd and 98th "
            f"percentiles {where}")


@click.command("info", short_help="Show a model's card: kind, bands, tile size, threshold.")
@click.argument("model", required=False, type=click.Path(readable=False))
@click.option("--json", "as_json", is_flag=True, help="Print the whole card as one JSON object.")
def command(model: str | None, as_json: bool) -> None:
    """Show the card of MODEL (a .safetensors checkpoint; default: the embedded model)."""
    record = card_record(model)
    click.echo(json.dumps(record) if as_json else "\n".join(card_lines(record)))


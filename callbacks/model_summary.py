"""The model summary printed at the start of a fit, without FLOPs that were never measured.

Lightning counts FLOPs only by running the module's ``forward`` on its ``example_input_array``.
MMAI's modules have neither (a batch is a dict of images, tokens, songs and diary fields, and
training goes through ``training_step``), so Lightning's summary shows a FLOPs column of zeros and
"Total FLOPs: 0", which reads as a measurement. :class:`ParameterSummary` prints the same layer
table and parameter totals, and the FLOPs only when Lightning measured them (a module with an
``example_input_array``); otherwise one line says they were not measured.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import get_formatted_model_size, get_human_readable_count

log = logging.getLogger(__name__)

NOT_MEASURED = "FLOPs: not measured (the module has no example_input_array to run its forward on)"
_RIGHT_ALIGNED = {"Params", "Params per Device", "FLOPs", "In sizes", "Out sizes"}


class ParameterSummary(ModelSummary):
    """Lightning's :class:`~lightning.pytorch.callbacks.ModelSummary` (a rich table when rich is
    installed, as Lightning's default summary), with FLOPs shown only when measured.

    Args:
        max_depth: the deepest layer nesting listed (default 1; 0 turns the summary off).
        **summarize_kwargs: ``header_style`` of the rich table (default ``"bold magenta"``).
    """

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        measured = total_flops > 0  # a forward of any of these layers costs some FLOPs
        columns = [(name, values) for name, values in summary_data if measured or name != "FLOPs"]
        totals = [("Trainable params", get_human_readable_count(int(trainable_parameters))),
                  ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
                  ("Total params", get_human_readable_count(int(total_parameters))),
                  ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
                  ("Modules in train mode", str(total_training_modes["train"])),
                  ("Modules in eval mode", str(total_training_modes["eval"]))]
        if measured:
            totals.append(("Total FLOPs", get_human_readable_count(int(total_flops))))
        footer = [f"{name}: {value}" for name, value in totals] + ([] if measured else [NOT_MEASURED])
        if _rich_available():
            _print_rich(columns, footer, summarize_kwargs.get("header_style", "bold magenta"))
        else:
            log.info("\n" + _text_table(columns) + "\n" + "\n".join(footer))


def _rich_available() -> bool:
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE  # what picks Lightning's default summary

    return bool(_RICH_AVAILABLE)


def _print_rich(columns: list[tuple[str, list[str]]], footer: list[str], header_style: str) -> None:
    from rich import get_console
    from rich.table import Table

    table = Table(header_style=header_style)
    for name, _ in columns:
        table.add_column(name, justify="right" if name in _RIGHT_ALIGNED else "left", no_wrap=name == "Name",
                         style="dim" if not name.strip() else None)
    for row in zip(*(values for _, values in columns)):
        table.add_row(*row)
    console = get_console()
    console.print(table)
    for line in footer:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _text_table(columns: list[tuple[str, list[str]]]) -> str:
    widths = [max([len(name), *(len(str(value)) for value in values)]) for name, values in columns]
    lines = [" | ".join(name.ljust(width) for (name, _), width in zip(columns, widths))]
    lines.append("-" * len(lines[0]))
    for row in zip(*(values for _, values in columns)):
        lines.append(" | ".join(str(value).ljust(width) for value, width in zip(row, widths)))
    return "\n".join(lines)

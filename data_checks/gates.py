"""Run one Great Expectations suite over one polars frame and say plainly what failed.

Every validation gets its own ephemeral Data Context (in-memory stores, a few milliseconds to
create): results never pile up in a long-running process, and two suites of the same name
(the labels suite for two ontologies) never meet in one store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import great_expectations as gx
import pandas as pd
import polars as pl
import pyarrow as pa
from dagster import MetadataValue
from great_expectations.core import ExpectationValidationResult
from great_expectations.data_context import AbstractDataContext
from great_expectations.data_context.types.base import ProgressBarsConfig

from resources.layout import gate_docs_root
from resources.services import ProjectResource

DOCS_SITE = "gate"

# pandas turns an integer or boolean column holding a null into floats or objects, so a type
# check would depend on whether the data happens to have nulls; its nullable types do not
_NULLABLE_PANDAS_TYPES = {
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(),
    pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}


@dataclass(frozen=True)
class Measure:
    """What a failed rule measured against its threshold: ``labelled share 0.562 < 0.9``,
    ``class retention 0 < 0.8 (category kite)``, ``changed images 3 > 0``."""

    name: str
    value: float
    comparison: str  # how the value breaks the threshold: "<", ">" or ">="
    threshold: float
    row: str | None = None  # the worst row, for a rule that judges each row against a bound

    def __str__(self) -> str:
        said = f"{self.name} {self.value:.3g} {self.comparison} {self.threshold:g}"
        return f"{said} ({self.row})" if self.row else said


@dataclass(frozen=True)
class GateResult:
    """What one suite said about one frame."""

    suite: str
    passed: bool
    rows: int  # rows validated
    evaluated: int  # expectations evaluated
    # one short readable line per failed expectation
    failed: tuple[str, ...]
    # every unexpected row of every failed row-level expectation: expectation, column,
    # <index column>, value (all strings; value null where missing, NaN included);
    # table-level failures appear in `failed` only
    unexpected: pl.DataFrame
    # index.html of the Data Docs site built for this validation, when asked for
    docs: Path | None
    # what the first failed rule measured; None when passed or when that rule measures
    # nothing (it raised, or it judges the table's columns)
    measure: Measure | None = None


def validate(
    suite: gx.ExpectationSuite,
    frame: pl.DataFrame,
    *,
    index_column: str,
    docs_dir: Path | None = None,
) -> GateResult:
    """Validate ``frame`` against ``suite``, naming unexpected rows by ``index_column``.

    With ``docs_dir``, GX Data Docs for this validation are written there (``docs_dir`` is
    this validation's site: pages an earlier validation left there are removed).
    """
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("polars_frames")
        .add_dataframe_asset(suite.name)
        .add_batch_definition_whole_dataframe("whole_frame")
    )
    # suites.add stores a copy, so the caller's suite can be validated again elsewhere
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite.name, data=batch, suite=context.suites.add(suite))
    )
    outcome = definition.run(
        batch_parameters={"dataframe": pandas_frame(frame)},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [index_column]},
    )
    failures = [result for result in outcome.results if not result.success]
    return GateResult(
        suite=suite.name,
        passed=bool(outcome.success),
        rows=frame.height,
        evaluated=outcome.statistics["evaluated_expectations"],
        failed=tuple(_summary(result) for result in failures),
        unexpected=_unexpected_rows(failures, index_column),
        docs=None if docs_dir is None else _build_data_docs(context, Path(docs_dir)),
        measure=_measure(failures[0]) if failures else None,
    )


def verdict_metadata(result: GateResult) -> dict[str, Any]:
    """A failed gate's verdict as check metadata, the same keys for every gate: ``why`` (one
    line about its first failed rule, e.g. "labelled share 0.562 < 0.9"), and ``measured`` and
    ``threshold`` where that rule measures something. Empty for a gate that passed."""
    if result.passed:
        return {}
    why = str(result.measure) if result.measure is not None else result.failed[0]
    if len(result.failed) > 1:
        why += f" (and {len(result.failed) - 1} more failed rules)"
    measured = (
        {"measured": result.measure.value, "threshold": result.measure.threshold}
        if result.measure is not None
        else {}
    )
    return {"why": why, **measured}


def docs_url(docs: Path, docs_root: Path, base_url: str) -> str:
    """The http URL at which ``docs`` (a Data Docs page under ``docs_root``) is served when
    ``docs_root`` is served at ``base_url`` (``relabel ui`` serves the gates' docs folder)."""
    relative = Path(docs).resolve().relative_to(Path(docs_root).resolve())
    return f"{base_url.rstrip('/')}/{quote(str(PurePosixPath(*relative.parts)))}"


def data_docs_metadata(result: GateResult, project: ProjectResource) -> dict[str, Any]:
    """A gate's Data Docs page as check metadata: ``data_docs``, its http URL where ``relabel
    ui`` serves the gates' docs folder (params.yaml ``ui``; a browser refuses a ``file://`` link
    in a web page), and ``data_docs_path``, the file. Empty when the gate wrote no docs."""
    if result.docs is None:
        return {}
    url = docs_url(result.docs, gate_docs_root(project.data_dir), project.params.ui.docs_url)
    return {"data_docs": MetadataValue.url(url), "data_docs_path": MetadataValue.path(str(result.docs))}


def pandas_frame(frame: pl.DataFrame) -> pd.DataFrame:
    """``frame`` as GX's pandas engine reads it.

    Integers and booleans keep their type whatever their nulls (nullable pandas types), enums
    become categoricals, and list/array values become Python lists: GX's type check knows
    those as "list", and they print and serialize plainly in results and Data Docs.
    """
    converted = frame.to_pandas(types_mapper=_NULLABLE_PANDAS_TYPES.get)
    for name, dtype in frame.schema.items():
        if dtype.is_nested():
            converted[name] = pd.Series(frame[name].to_list(), index=converted.index, dtype=object)
    return converted


def gx_type_name(dtype: pl.DataType) -> str:
    """The ``type_`` by which ``expect_column_values_to_be_of_type`` knows a column of
    ``dtype`` once ``pandas_frame`` has converted it."""
    if dtype == pl.String:
        return "str"
    if isinstance(dtype, (pl.Enum, pl.Categorical)):
        return "CategoricalDtypeType"
    if dtype.is_nested():
        return "list"
    if dtype == pl.Boolean:
        return "bool"
    if dtype.is_numeric():
        return str(dtype).lower()  # Int32 -> "int32", Float64 -> "float64"
    raise ValueError(f"no GX type name for polars type {dtype}")


def _columns(kwargs: Mapping[str, Any]) -> list[str]:
    """The columns an expectation looks at (one, a pair, or a list)."""
    if "column" in kwargs:
        return [kwargs["column"]]
    if "column_A" in kwargs:
        return [kwargs["column_A"], kwargs["column_B"]]
    return list(kwargs.get("column_list") or [])


def _rule(result: ExpectationValidationResult) -> str:
    """The expectation with its columns and bounds: ``expect_column_values_to_be_between(labels, 1..)``."""
    config = result.expectation_config
    kwargs = config.kwargs
    arguments = _columns(kwargs) if "column_list" not in kwargs else []
    if "min_value" in kwargs or "max_value" in kwargs:
        arguments.append(f"{_bound(kwargs.get('min_value'))}..{_bound(kwargs.get('max_value'))}")
    return f"{config.type}({', '.join(arguments)})" if arguments else config.type


def _summary(result: ExpectationValidationResult) -> str:
    """One line: the expectation, its columns and bounds, and how it failed."""
    kwargs = result.expectation_config.kwargs
    head = _rule(result)
    errors = _exception_messages(result.exception_info)
    if errors:
        return f"{head}: error: {'; '.join(errors)}"
    details = result.result
    if "unexpected_count" in details:
        line = f"{head}: {details['unexpected_count']} unexpected"
        if kwargs.get("mostly") is not None:
            share = f"{details['unexpected_percent']:.1f}% of {details['element_count']}"
            line += f" ({share}, mostly {kwargs['mostly']:g})"
        return line
    return f"{head}: observed {details.get('observed_value')!r}"


def _measure(result: ExpectationValidationResult) -> Measure | None:
    """What a failed row-level rule measured, named by its suite (the expectation's
    ``meta["measure"]``): the share of rows that pass, for a rule that holds for ``mostly``
    of them; the worst row's value, for one that bounds every row's; else the rows that
    failed it, of which there should be none."""
    config = result.expectation_config
    kwargs, details = config.kwargs, result.result
    if "unexpected_count" not in details:
        return None
    name = (config.meta or {}).get("measure")
    if name and kwargs.get("mostly") is not None:
        return Measure(name, 1 - details["unexpected_percent"] / 100, "<", kwargs["mostly"])
    if name and config.type == "expect_column_values_to_be_between" and details.get("unexpected_index_list"):
        return _worst_row(name, kwargs, details)
    return Measure(name or f"rows failing {_rule(result)}", details["unexpected_count"], ">", 0)


def _worst_row(name: str, kwargs: Mapping[str, Any], details: Mapping[str, Any]) -> Measure:
    """The value furthest beyond a between rule's bound, and the row it is of."""
    column, (index_column,) = kwargs["column"], details["unexpected_index_column_names"]
    rows = details["unexpected_index_list"]
    below = [row for row in rows if kwargs.get("min_value") is not None and row[column] < kwargs["min_value"]]
    if below:
        worst = min(below, key=lambda row: row[column])
        comparison, threshold = "<", kwargs["min_value"]
    else:
        worst = max(rows, key=lambda row: row[column])
        comparison, threshold = (">=" if kwargs.get("strict_max") else ">"), kwargs["max_value"]
    return Measure(
        name, float(worst[column]), comparison, threshold, f"{index_column} {_text(worst[index_column])}"
    )


def _bound(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _exception_messages(info: Mapping[str, Any] | None) -> list[str]:
    # GX reports an expectation that raised either flat ({"raised_exception": ...}) or, when a
    # metric raised, keyed by metric; the same message often repeats across metrics
    if not info:
        return []
    reports = [info] if "raised_exception" in info else list(info.values())
    messages = [r["exception_message"].removeprefix("Error: ") for r in reports if r.get("raised_exception")]
    return list(dict.fromkeys(messages))


def _unexpected_rows(failures: list[ExpectationValidationResult], index_column: str) -> pl.DataFrame:
    rows = []
    for result in failures:
        columns = _columns(result.expectation_config.kwargs)
        for entry in result.result.get("unexpected_index_list") or []:
            if len(columns) == 1:
                value = _text(entry.get(columns[0]))
            else:
                value = ", ".join(f"{name}={_text(entry.get(name))}" for name in columns)
            rows.append(
                {
                    "expectation": result.expectation_config.type,
                    "column": ", ".join(columns),
                    index_column: _text(entry.get(index_column)),
                    "value": value,
                }
            )
    schema = {"expectation": pl.String, "column": pl.String, index_column: pl.String, "value": pl.String}
    return pl.DataFrame(rows, schema=schema)


def _text(value: Any) -> str | None:
    # pandas keeps a missing value as None, NA or NaN depending on the column's type, and
    # cannot tell polars' null from NaN in a float column: all of them are missing here
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _build_data_docs(context: AbstractDataContext, docs_dir: Path) -> Path:
    """Render this context's suite and validation result as a local Data Docs site."""
    context.add_data_docs_site(
        site_name=DOCS_SITE,
        site_config={
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    context.build_data_docs(site_names=[DOCS_SITE])
    index = docs_dir / "index.html"
    if not index.is_file():
        raise RuntimeError(f"GX built no Data Docs index at {index}")
    return index
